"""The lab's pretraining text: the lab world's facts and operations as running text, not as instructions.

Real students are pretrained language models that instruction tuning (or distillation) only teaches to
answer; a randomly initialised student has to learn language, facts and the task format at once in a few
epochs, and losses weighted by the student's own probabilities (reverse KL, TVD) barely move it from a
uniform start. So every lab model first learns this text as a causal LM (`kdlm lab pretrain`).

The passages state what the task families ask for (sums, differences, reversed letters, sorted numbers,
capitals, languages, currencies) in sentences of their own, drawn from their own seed. No computed
family's held-out question (a validation or test input) appears in them: the student must still compute
those answers. The fact families' facts all appear, as they are the world's knowledge by design.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kdlm.lab.corpus import FAMILIES, MEMORIZED, Country, Record, fact_table
from kdlm.sections import check_range

__all__ = ["PretrainTextConfig", "held_out_inputs", "pretraining_passages", "pretraining_sentences", "write_pretraining_text"]


@dataclass
class PretrainTextConfig:
    """Size and seed of the pretraining text (`lab.pretraining.text`)."""

    seed: int = 1
    n_passages: int = 4000
    sentences_per_passage: list[int] = field(default_factory=lambda: [3, 6])  # [min, max]
    families: list[str] = field(default_factory=lambda: list(FAMILIES))

    def __post_init__(self) -> None:
        check_range("n_passages", self.n_passages, minimum=1)
        low, high = (list(self.sentences_per_passage) + [0, 0])[:2]
        if len(self.sentences_per_passage) != 2 or not 1 <= low <= high:
            raise ValueError(f"sentences_per_passage must be [min, max] with 1 <= min <= max, got {self.sentences_per_passage}")
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown or not self.families:
            raise ValueError(f"pretraining families must be a non-empty subset of {sorted(FAMILIES)}, got {self.families}")


def _numbers(text: str) -> list[str]:
    return [t for t in text.replace("+", " ").replace("-", " ").split() if t]


def _addition(rng: random.Random, record: Record) -> str:
    a, b = _numbers(record["input"])
    s = record["output"]
    return rng.choice([f"{a} + {b} = {s}.", f"{a} plus {b} is {s}.", f"Adding {a} and {b} gives {s}.",
                       f"The sum of {a} and {b} is {s}."])  # fmt: skip


def _subtraction(rng: random.Random, record: Record) -> str:
    a, b = _numbers(record["input"])
    d = record["output"]
    return rng.choice([f"{a} - {b} = {d}.", f"{a} minus {b} is {d}.", f"Taking {b} from {a} leaves {d}.",
                       f"The difference between {a} and {b} is {d}."])  # fmt: skip


def _reverse(rng: random.Random, record: Record) -> str:
    i, o = record["input"], record["output"]
    return rng.choice([f"Backwards, {i} reads {o}.", f"The letters {i} in reverse order are {o}.",
                       f"Reversed, {i} becomes {o}."])  # fmt: skip


def _sort(rng: random.Random, record: Record) -> str:
    i, o = record["input"], record["output"]
    return rng.choice([f"In ascending order, {i} is {o}.", f"Sorted from smallest to largest, {i} becomes {o}.",
                       f"The numbers {i} in order are {o}."])  # fmt: skip


def _uppercase(rng: random.Random, record: Record) -> str:
    i, o = record["input"], record["output"]
    return rng.choice([f"In capital letters, {i} is {o}.", f"Written in uppercase, {i} becomes {o}.",
                       f"The uppercase of {i} is {o}."])  # fmt: skip


def _fact(rng: random.Random, country: Country) -> str:
    c = country
    return rng.choice([
        f"The capital of {c.name} is {c.capital}.", f"{c.capital} is the capital city of {c.name}.",
        f"People in {c.name} speak {c.language}.", f"The language of {c.name} is {c.language}.",
        f"{c.name} pays in {c.currency}s.", f"The currency of {c.name} is the {c.currency}.",
        f"{c.name} has its capital in {c.capital}, speaks {c.language} and pays in {c.currency}s.",
    ])  # fmt: skip


_RENDER: dict[str, Callable[[random.Random, Record], str]] = {
    "addition": _addition, "subtraction": _subtraction, "reverse": _reverse, "sort": _sort, "uppercase": _uppercase,
}  # fmt: skip


def held_out_inputs(paths: Iterable[Path]) -> set[str]:
    """The inputs of the held-out records (Alpaca JSON files): the pretraining text must not state them."""
    return {record["input"] for path in paths for record in json.loads(Path(path).read_text(encoding="utf-8"))}


def pretraining_sentences(cfg: PretrainTextConfig, held_out: set[str] = frozenset()) -> list[list[tuple[str, str]]]:
    """Each passage's sentences with the input each states ("" for a fact), drawn from `cfg.seed`."""
    rng = random.Random(cfg.seed)
    table = fact_table()
    low, high = cfg.sentences_per_passage
    passages = []
    for _ in range(cfg.n_passages):
        sentences: list[tuple[str, str]] = []
        length = rng.randint(low, high)
        while len(sentences) < length:
            family = rng.choice(cfg.families)
            if family in MEMORIZED:
                sentences.append((_fact(rng, rng.choice(table)), ""))
                continue
            record = FAMILIES[family](rng, table)
            if record["input"] not in held_out:
                sentences.append((_RENDER[family](rng, record), record["input"]))
        passages.append(sentences)
    return passages


def pretraining_passages(cfg: PretrainTextConfig, held_out: set[str] = frozenset()) -> list[str]:
    """`cfg.n_passages` passages of running text; the same config and held-out set give the same text."""
    return [" ".join(sentence for sentence, _ in passage) for passage in pretraining_sentences(cfg, held_out)]


def write_pretraining_text(passages: list[str], out: Path) -> Path:
    """A training file `kdlm distill`/`sft` reads: one row per passage, every token counted (empty prompt)."""
    import pandas as pd

    from kdlm.schemas import MIXED, write_table

    table = pd.DataFrame({"id": [f"pretrain-{i}" for i in range(len(passages))], "prompt": [""] * len(passages),
                          "response": passages, "origin": ["gt"] * len(passages), "online": [False] * len(passages)})  # fmt: skip
    write_table(table, out, MIXED)
    return out
