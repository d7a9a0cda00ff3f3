"""Load instruction records from user files into the records parquet every later stage reads.

Formats: Alpaca JSON (one list), JSONL, parquet, CSV. Field names are mapped through `fields` so the
evaluation sets' own layouts (e.g. Self-Instruct's `instruction`/`instances`) need no conversion
script. Every record is validated; the error names the file, the record and the field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kdlm.schemas import RECORDS, write_table

FORMATS = ("alpaca", "jsonl", "parquet", "csv")
REQUIRED_FIELDS = ("instruction", "input", "output")


class RecordError(ValueError):
    """A record in a user's data file is malformed."""


@dataclass
class PrepareConfig:
    """Where records come from and how their fields are named."""

    input: Path
    out: Path
    dataset: str
    format: str = "alpaca"
    # our field name -> the file's field name; an absent `input` field reads as ""
    fields: dict[str, str] = field(default_factory=lambda: {k: k for k in REQUIRED_FIELDS})

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown data format {self.format!r}; allowed: {list(FORMATS)}")
        unknown = sorted(set(self.fields) - set(REQUIRED_FIELDS))
        if unknown:
            raise ValueError(f"unknown field mapping key(s) {unknown}; allowed: {list(REQUIRED_FIELDS)}")
        self.fields = {k: self.fields.get(k, k) for k in REQUIRED_FIELDS}


def _raw_records(path: Path, fmt: str) -> Iterator[tuple[str, dict]]:
    """(location, raw dict) pairs; location is how an error message points at the record."""
    if fmt == "alpaca":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise RecordError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from err
        if not isinstance(data, list):
            raise RecordError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        for index, raw in enumerate(data):
            yield f"record {index}", raw
    elif fmt == "jsonl":
        with path.open(encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"line {lineno}", json.loads(line)
                except json.JSONDecodeError as err:
                    raise RecordError(f"{path}: line {lineno}: invalid JSON ({err.msg})") from err
    else:
        import pandas as pd

        df = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path, dtype=str, keep_default_na=False)
        for index, raw in enumerate(df.to_dict(orient="records")):
            yield f"row {index}", raw


def _validate(path: Path, location: str, raw: object, fields: dict[str, str]) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise RecordError(f"{path}: {location}: expected an object, got {type(raw).__name__}")
    record = {}
    for ours, theirs in fields.items():
        value = raw.get(theirs, "" if ours == "input" else None)
        if value is None:
            raise RecordError(f"{path}: {location}: missing field {theirs!r}")
        if not isinstance(value, str):
            raise RecordError(f"{path}: {location}: field {theirs!r} must be a string, got {type(value).__name__}")
        record[ours] = value
    if not record["instruction"].strip():
        raise RecordError(f"{path}: {location}: field {fields['instruction']!r} is empty")
    return record


def record_id(record: dict[str, str]) -> str:
    """Content hash: stable across reruns and reorderings of the source file."""
    digest = hashlib.sha1("\x00".join(record[k] for k in REQUIRED_FIELDS).encode("utf-8"))
    return digest.hexdigest()[:16]


def load_records(cfg: PrepareConfig) -> list[dict[str, str]]:
    """Validated records with ids; duplicates of the same content get `.1`, `.2`, ... suffixes."""
    if not cfg.input.exists():
        raise FileNotFoundError(f"{cfg.input}: no such data file (dataset {cfg.dataset!r})")
    records, seen = [], {}
    for location, raw in _raw_records(cfg.input, cfg.format):
        record = _validate(cfg.input, location, raw, cfg.fields)
        base = record_id(record)
        seen[base] = seen.get(base, -1) + 1
        record["id"] = base if seen[base] == 0 else f"{base}.{seen[base]}"
        record["dataset"] = cfg.dataset
        records.append(record)
    if not records:
        raise RecordError(f"{cfg.input}: no records")
    return records


def prepare(cfg: PrepareConfig) -> int:
    """Load, validate and write the records parquet; returns the record count."""
    import pandas as pd

    records = load_records(cfg)
    write_table(pd.DataFrame(records), cfg.out, RECORDS)
    return len(records)
