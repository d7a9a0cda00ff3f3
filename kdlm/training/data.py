"""Training examples from the parquet files the earlier stages write."""

from __future__ import annotations

from pathlib import Path

from kdlm.data.tokenize import encode_example


class ExampleDataset:
    """Tokenized (prompt, response) pairs; a map-style dataset for the HF Trainer."""

    def __init__(self, prompts: list[str], responses: list[str], tokenizer, max_length: int) -> None:
        self.examples = [encode_example(tokenizer, p, r, max_length) for p, r in zip(prompts, responses, strict=True)]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.examples[index]

    @property
    def n_label_tokens(self) -> int:
        return sum(sum(1 for t in e["labels"] if t != -100) for e in self.examples)


def load_pairs(path: Path, template: str) -> tuple[list[str], list[str]]:
    """Prompts and responses from a mixed-data parquet or, for plain SFT, a records parquet.

    Raises:
        ValueError: if the mixed file asks for on-policy rows (the trainer must generate those).
    """
    import pyarrow.parquet as pq

    from kdlm.data.templates import format_prompt
    from kdlm.schemas import MIXED, RECORDS, read_table

    names = pq.read_schema(path).names
    if "prompt" in names:
        df = read_table(path, MIXED)
        online = int(df["online"].sum())
        if online:
            raise ValueError(
                f"{path}: {online} rows are marked online (on-policy); this trainer version trains on "
                "offline sources only (gt, teacher)"
            )
        return df["prompt"].tolist(), df["response"].tolist()
    df = read_table(path, RECORDS)
    prompts = [format_prompt(r.instruction, r.input, template) for r in df.itertuples()]
    return prompts, df["output"].tolist()
