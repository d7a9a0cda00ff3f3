"""Training examples from the parquet files the earlier stages write.

A mixed-data parquet (kdlm.data.mixing) names its source and ratio in the `source`/`ratio` columns and
marks with `online` the rows the trainer must answer on-policy; their offline `response` is kept as
the fallback the dataset encodes, and the trainer replaces it each step (kdlm.training.onpolicy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kdlm.data.templates import format_prompt
from kdlm.data.tokenize import collate, encode_example
from kdlm.schemas import MIXED, RECORDS, read_file_schema, read_table
from kdlm.study import SOURCES


@dataclass
class TrainingRows:
    """Prompts and offline responses of one source, with the rows to answer on-policy."""

    prompts: list[str]
    responses: list[str]
    online: list[bool]
    source: str  # gt | teacher | student | mix_token | mix_request_teacher | mix_request_gt
    ratio: float  # on-policy share (mix_token: probability each token is the student's)

    @property
    def n_online(self) -> int:
        return sum(self.online)


class ExampleDataset:
    """Tokenized (prompt, response) pairs; a map-style dataset for the HF Trainer.

    Each item carries its `index`, so the trainer can find the row's prompt and online flag.
    """

    def __init__(self, prompts: list[str], responses: list[str], tokenizer, max_length: int) -> None:
        self.examples = [encode_example(tokenizer, p, r, max_length) for p, r in zip(prompts, responses, strict=True)]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return {**self.examples[index], "index": index}

    @property
    def n_label_tokens(self) -> int:
        return sum(sum(1 for t in e["labels"] if t != -100) for e in self.examples)


def collate_indexed(examples: list[dict], pad_token_id: int) -> dict:
    """`collate` plus the rows' dataset indices as an int64 tensor `index` of shape (B,)."""

    batch = collate(examples, pad_token_id)
    batch["index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)  # (B,)
    return batch


def load_rows(path: Path, template: str) -> TrainingRows:
    """The rows of a mixed-data parquet or, for plain SFT, a records parquet (source `gt`).

    Raises:
        ValueError: if a mixed file has online rows but names no known on-policy source.
    """

    names = read_file_schema(path).names
    if "prompt" not in names:
        df = read_table(path, RECORDS)
        prompts = [format_prompt(r.instruction, r.input, template) for r in df.itertuples()]
        return TrainingRows(prompts, df["output"].tolist(), [False] * len(df), "gt", 0.0)
    df = read_table(path, MIXED)
    online = [bool(x) for x in df["online"]]
    sources = sorted(set(df["source"])) if "source" in df.columns else []
    if len(sources) > 1:
        raise ValueError(f"{path}: rows of several sources {sources}; a training file holds one source")
    source = sources[0] if sources else ("gt" if set(df["origin"]) <= {"gt"} else "teacher")
    if source not in SOURCES:
        raise ValueError(f"{path}: unknown source {source!r}; allowed: {list(SOURCES)}")
    if any(online) and not SOURCES[source].generates_during_training:
        raise ValueError(
            f"{path}: {sum(online)} rows are marked online but the source is {source!r}; "
            f"online rows need one of {[s.name for s in SOURCES.values() if s.generates_during_training]}"
        )
    ratio = float(df["ratio"].iloc[0]) if "ratio" in df.columns and len(df) else 0.0
    return TrainingRows(df["prompt"].tolist(), df["response"].tolist(), online, source, ratio)


def load_pairs(path: Path, template: str) -> tuple[list[str], list[str]]:
    """Prompts and responses of an offline source (for callers that do not generate, e.g. benchmarks).

    Raises:
        ValueError: if the file has online rows; `load_rows` reads those for the trainer.
    """
    rows = load_rows(path, template)
    if rows.n_online:
        raise ValueError(
            f"{path}: {rows.n_online} rows are marked online (source {rows.source!r}); they are generated "
            "during training, so read them with load_rows"
        )
    return rows.prompts, rows.responses
