"""Deterministic synthetic instruction corpus for the embedded lab.

Records have the Alpaca shape (instruction, input, output) so the lab's files go through the same
`kdlm prepare` loader as a user's `alpaca_gpt4_data.json`. Every family has answers that can be
checked exactly, and phrasings vary so the models must read the instruction, not memorize a template.
Families of different difficulty let the teacher–student gap show: arithmetic and string edits need
computation, the fact families need memorized knowledge that a small student holds less of.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kdlm.data.templates import DEFAULT_TEMPLATE, format_prompt
from kdlm.io import atomic_path

Record = dict[str, str]

_SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "tor", "sa", "bel", "dun", "qui", "zor", "ella", "mar", "ni", "os"]
_LANGUAGES = ["Aldric", "Bemish", "Corvan", "Dulese", "Estral", "Fennic", "Gorish", "Halvic"]
_CURRENCIES = ["crown", "mark", "shell", "talon", "drum", "leaf"]
_WORDS = [
    "apple", "river", "stone", "cloud", "tiger", "lamp", "green", "quiet", "bread", "music",
    "paper", "window", "silver", "garden", "rocket", "candle", "forest", "planet", "yellow", "basket",
]  # fmt: skip


@dataclass(frozen=True)
class Country:
    """One row of the lab's fixed fact table."""

    name: str
    capital: str
    language: str
    currency: str


def _name(rng: random.Random, n_syllables: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(n_syllables)).capitalize()


def fact_table(n_countries: int = 24, seed: int = 1234) -> list[Country]:
    """The fictional world the fact families ask about; fixed by its own seed, not the split seed."""
    rng = random.Random(seed)
    names: set[str] = set()
    countries = []
    while len(countries) < n_countries:
        name, capital = _name(rng, 3), _name(rng, 2)
        if name in names or capital in names:
            continue
        names.update({name, capital})
        countries.append(Country(name, capital, rng.choice(_LANGUAGES), rng.choice(_CURRENCIES)))
    return countries


def _pick(rng: random.Random, options: list[str]) -> str:
    return options[rng.randrange(len(options))]


def _addition(rng: random.Random, _: list[Country]) -> Record:
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    instruction = _pick(rng, ["Add the two numbers.", "What is the sum of these numbers?", "Compute the total."])
    return {"instruction": instruction, "input": f"{a} + {b}", "output": str(a + b)}


def _subtraction(rng: random.Random, _: list[Country]) -> Record:
    a = rng.randint(10, 60)
    b = rng.randint(0, a)
    instruction = _pick(rng, ["Subtract the second number from the first.", "What is the difference?"])
    return {"instruction": instruction, "input": f"{a} - {b}", "output": str(a - b)}


def _reverse(rng: random.Random, _: list[Country]) -> Record:
    letters = list(_pick(rng, _WORDS)[: rng.randint(3, 5)])
    instruction = _pick(rng, ["Reverse the letters.", "Write the letters in reverse order."])
    return {"instruction": instruction, "input": " ".join(letters), "output": " ".join(reversed(letters))}


def _sort(rng: random.Random, _: list[Country]) -> Record:
    numbers = rng.sample(range(1, 60), rng.randint(3, 5))
    instruction = _pick(rng, ["Sort the numbers from smallest to largest.", "Put these numbers in ascending order."])
    return {
        "instruction": instruction,
        "input": " ".join(map(str, numbers)),
        "output": " ".join(map(str, sorted(numbers))),
    }


def _uppercase(rng: random.Random, _: list[Country]) -> Record:
    words = rng.sample(_WORDS, rng.randint(1, 3))
    instruction = _pick(rng, ["Convert the text to uppercase.", "Write this in capital letters."])
    return {"instruction": instruction, "input": " ".join(words), "output": " ".join(words).upper()}


def _capital(rng: random.Random, table: list[Country]) -> Record:
    country = rng.choice(table)
    instruction = _pick(
        rng, [f"What is the capital of {country.name}?", f"Name the capital city of {country.name}."]
    )
    return {"instruction": instruction, "input": "", "output": country.capital}


def _describe(rng: random.Random, table: list[Country]) -> Record:
    country = rng.choice(table)
    instruction = _pick(rng, ["Describe the country.", "Give the key facts about this country."])
    output = (
        f"{country.name} has its capital in {country.capital}, "
        f"speaks {country.language} and pays in {country.currency}s."
    )
    return {"instruction": instruction, "input": country.name, "output": output}


FAMILIES: dict[str, Callable[[random.Random, list[Country]], Record]] = {
    "addition": _addition,
    "subtraction": _subtraction,
    "reverse": _reverse,
    "sort": _sort,
    "uppercase": _uppercase,
    "capital": _capital,
    "describe": _describe,
}
MEMORIZED = frozenset({"capital", "describe"})


@dataclass
class CorpusConfig:
    """Sizes and seed of the synthetic corpus; splits are disjoint by (instruction, input)."""

    seed: int = 0
    n_train: int = 3000
    n_validation: int = 200
    n_test: int = 300
    families: list[str] = field(default_factory=lambda: list(FAMILIES))

    def __post_init__(self) -> None:
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown corpus families {unknown}; allowed: {sorted(FAMILIES)}")
        if not self.families:
            raise ValueError(f"corpus families must not be empty; allowed: {sorted(FAMILIES)}")
        for name in ("n_train", "n_validation", "n_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"corpus {name} must be >= 1, got {getattr(self, name)}")


def build_corpus(cfg: CorpusConfig) -> dict[str, list[Record]]:
    """Train/validation/test splits; same config → identical records.

    Test and validation records are drawn first and removed from the train pool, so no computed
    evaluation prompt is seen in training. The fact families ask about the one fixed table, which is
    the lab world's knowledge: their prompts recur across splits by design.
    """
    rng = random.Random(cfg.seed)
    table = fact_table()
    sizes = {"test": cfg.n_test, "validation": cfg.n_validation, "train": cfg.n_train}
    held_out: set[tuple[str, str]] = set()
    splits: dict[str, list[Record]] = {}
    for split, size in sizes.items():
        records: list[Record] = []
        attempts = 0
        while len(records) < size:
            attempts += 1
            if attempts > 50 * size + 1000:
                raise ValueError(f"cannot draw {size} distinct {split} records from families {cfg.families}")
            family = cfg.families[len(records) % len(cfg.families)]
            record = FAMILIES[family](rng, table)
            key = (record["instruction"], record["input"])
            if family not in MEMORIZED and key in held_out:
                continue
            if split != "train":
                held_out.add(key)
            records.append(record)
        splits[split] = records
    return splits


def write_corpus(splits: dict[str, list[Record]], out_dir: Path) -> list[Path]:
    """One Alpaca-style JSON list per split, written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, records in splits.items():
        path = out_dir / f"{split}.json"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(records, indent=1, ensure_ascii=False))
        paths.append(path)
    return paths


def corpus_texts(records: Iterable[Record]) -> Iterable[str]:
    """All strings a tokenizer should see from these records."""
    for record in records:
        yield from (record["instruction"], record["input"], record["output"])


def training_texts(paths: Iterable[Path], template: str = DEFAULT_TEMPLATE) -> Iterator[str]:
    """Each record as the model will see it (prompt + response): what the lab tokenizer learns from."""

    for path in paths:
        for record in json.loads(Path(path).read_text(encoding="utf-8")):
            yield format_prompt(record["instruction"], record["input"], template) + record["output"]
