"""Load instruction records from user files into the records parquet every later stage reads.

Formats: Alpaca JSON (one list), JSONL, parquet, CSV, and Hugging Face `datasets` (`hf`: a hub id, a
local data directory, or a directory written by `save_to_disk`). Field names are mapped through
`fields` so the evaluation sets' own layouts need no conversion script; a mapped name may be a dotted
path into nested values, with list indices as numbers (Self-Instruct's `instances.0.output`). Fields
not mapped are ignored.

Every record is validated; the error names the file, the record (line, index or row) and the field.
With `on_bad_record="skip"` bad records are dropped instead and counted by reason in
`<out>.skipped.json`, written beside the output. Ids are content hashes, stable across reruns and
reorderings of the source file.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kdlm.io import atomic_path
from kdlm.schemas import RECORDS, write_table

log = logging.getLogger(__name__)

FORMATS = ("alpaca", "jsonl", "parquet", "csv", "hf")
REQUIRED_FIELDS = ("instruction", "input", "output")
ON_BAD_RECORD = ("error", "skip")


class RecordError(ValueError):
    """A record in a user's data file is malformed; `reason` is its category for skip counts."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class PrepareConfig:
    """Where records come from and how their fields are named."""

    input: Path | str  # a file; for format `hf` a hub id or a local directory
    out: Path
    dataset: str
    format: str = "alpaca"
    # our field name -> the file's field name or dotted path; an absent `input` field reads as ""
    fields: dict[str, str] = field(default_factory=lambda: {k: k for k in REQUIRED_FIELDS})
    on_bad_record: str = "error"  # error | skip (skipped records counted in <out>.skipped.json)
    hf_split: str | None = None  # `hf` only: split to load (e.g. "train", "test[:100]"); None: the only one
    hf_name: str | None = None  # `hf` only: the data set's configuration name, if it has several

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown data format {self.format!r}; allowed: {list(FORMATS)}")
        if self.on_bad_record not in ON_BAD_RECORD:
            raise ValueError(f"unknown on_bad_record {self.on_bad_record!r}; allowed: {list(ON_BAD_RECORD)}")
        unknown = sorted(set(self.fields) - set(REQUIRED_FIELDS))
        if unknown:
            raise ValueError(f"unknown field mapping key(s) {unknown}; allowed: {list(REQUIRED_FIELDS)}")
        for ours, theirs in self.fields.items():
            if not isinstance(theirs, str) or not theirs:
                raise ValueError(f"field mapping {ours!r} must be a non-empty field name, got {theirs!r}")
        self.fields = {k: self.fields.get(k, k) for k in REQUIRED_FIELDS}
        if self.format != "hf":
            self.input = Path(self.input)
        self.out = Path(self.out)


# ------------------------------------------------------------------------------------ raw records

RawItem = tuple[str, object, RecordError | None]  # (location, raw record, error reading it)


def _decode(path: Path, data: bytes, first_line: int = 1) -> str:
    """UTF-8 text (a leading byte-order mark dropped, as editors on Windows write one); invalid bytes are
    one error naming the file and line."""
    try:
        return data.decode("utf-8-sig" if first_line == 1 else "utf-8")
    except UnicodeDecodeError as err:
        line = first_line + data[: err.start].count(b"\n")
        raise RecordError(f"{path}: line {line}: not valid UTF-8 (byte 0x{data[err.start]:02x}); save the file as UTF-8") from None


def _json_list(path: Path) -> Iterator[RawItem]:
    try:
        data = json.loads(_decode(path, path.read_bytes()))
    except json.JSONDecodeError as err:
        raise RecordError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from err
    if not isinstance(data, list):
        raise RecordError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for index, raw in enumerate(data):
        yield f"record {index}", raw, None


def _jsonl(path: Path) -> Iterator[RawItem]:
    with path.open("rb") as handle:
        for lineno, raw_line in enumerate(handle, start=1):
            try:
                line = _decode(path, raw_line, lineno)
            except RecordError as err:
                yield f"line {lineno}", None, RecordError(str(err), "invalid_utf8")
                continue
            if not line.strip():
                continue
            try:
                yield f"line {lineno}", json.loads(line), None
            except json.JSONDecodeError as err:
                yield f"line {lineno}", None, RecordError(f"{path}: line {lineno}: invalid JSON ({err.msg})", "invalid_json")


def _table(path: Path, fmt: str) -> Iterator[RawItem]:
    if fmt == "parquet":
        try:
            rows = pq.read_table(path).to_pylist()  # native Python values, nested lists kept
        except (pa.ArrowInvalid, OSError) as err:
            raise RecordError(f"{path}: not a readable parquet file ({err})") from err
    else:
        try:
            text = io.StringIO(_decode(path, path.read_bytes()))
            rows = pd.read_csv(text, dtype=str, keep_default_na=False).to_dict(orient="records")
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise RecordError(f"{path}: not a readable CSV file ({err})") from err
    for index, raw in enumerate(rows):
        yield f"row {index}", raw, None


def _is_saved_dataset(path: Path) -> bool:
    """A directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return path.is_dir() and any((path / name).exists() for name in ("state.json", "dataset_dict.json"))


def load_hf_dataset(source: str, split: str | None = None, name: str | None = None):
    """One split of a Hugging Face data set as a `datasets.Dataset`.

    `source` is a directory written by `save_to_disk` (read with `load_from_disk`), or anything
    `datasets.load_dataset` accepts: a hub id or a local directory of data files.

    Raises:
        ValueError: if the split does not exist or, with `split=None`, the data set has several.
    """
    import datasets  # only for the `hf` format: a heavy import the planner and other formats do without

    path = Path(source)
    if _is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict) and split is not None:
            if split not in loaded:
                raise ValueError(f"{source}: no split {split!r}; has {sorted(loaded)}")
            return loaded[split]
    else:
        try:
            loaded = datasets.load_dataset(source, name, split=split)
        except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as err:
            raise FileNotFoundError(f"{source}: no such data set (hub id or directory): {err}") from err
        except ConnectionError as err:
            raise FileNotFoundError(f"{source}: not a local directory, and the hub cannot be reached ({err})") from err
        except ValueError as err:  # e.g. an unknown split name
            raise ValueError(f"{source}: {err}") from err
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise ValueError(f"{source}: several splits {sorted(loaded)}; choose one (hf_split)")
        loaded = next(iter(loaded.values()))
    return loaded


def _hf(source: str, split: str | None, name: str | None) -> Iterator[RawItem]:
    dataset = load_hf_dataset(source, split, name)
    for index, raw in enumerate(dataset):
        yield f"row {index}", raw, None


def _raw_records(cfg: PrepareConfig) -> Iterator[RawItem]:
    """(location, raw record, read error) triples; location is how a message points at the record."""
    if cfg.format == "hf":
        yield from _hf(str(cfg.input), cfg.hf_split, cfg.hf_name)
        return
    if Path(cfg.input).is_dir():
        raise RecordError(f"{cfg.input}: is a directory; format {cfg.format!r} reads one file (format 'hf' reads a directory)")
    if cfg.format == "alpaca":
        yield from _json_list(cfg.input)
    elif cfg.format == "jsonl":
        yield from _jsonl(cfg.input)
    else:
        yield from _table(cfg.input, cfg.format)


# ------------------------------------------------------------------------------------- validation

_MISSING = object()


def lookup(raw: dict, path: str) -> object:
    """`raw[path]`, or the value at a dotted path (`instances.0.output`); `_MISSING` if absent.

    An exact key wins over a dotted path, so field names that contain dots still work.
    """
    if path in raw:
        return raw[path]
    value: object = raw
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list | tuple) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _validate(source: object, location: str, raw: object, fields: dict[str, str]) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise RecordError(f"{source}: {location}: expected an object, got {type(raw).__name__}", "not_an_object")
    record = {}
    for ours, theirs in fields.items():
        value = lookup(raw, theirs)
        if ours == "input" and (value is _MISSING or value is None):
            value = ""
        if value is _MISSING:
            raise RecordError(f"{source}: {location}: missing field {theirs!r}", f"missing_field:{theirs}")
        if value is None:
            raise RecordError(f"{source}: {location}: field {theirs!r} is null", f"null_field:{theirs}")
        if not isinstance(value, str):
            raise RecordError(
                f"{source}: {location}: field {theirs!r} must be a string, got {type(value).__name__}",
                f"not_a_string:{theirs}",
            )
        record[ours] = value
    if not record["instruction"].strip():
        raise RecordError(f"{source}: {location}: field {fields['instruction']!r} is empty", "empty_instruction")
    return record


def record_id(record: dict[str, str]) -> str:
    """Content hash: stable across reruns and reorderings of the source file."""
    digest = hashlib.sha1("\x00".join(record[k] for k in REQUIRED_FIELDS).encode("utf-8"))
    return digest.hexdigest()[:16]


@dataclass
class LoadReport:
    """What loading kept and dropped; written as `<out>.skipped.json` when bad records are skipped."""

    read: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    examples: list[str] = field(default_factory=list)  # the first few skip messages

    def skip(self, err: RecordError) -> None:
        self.skipped[err.reason] = self.skipped.get(err.reason, 0) + 1
        if len(self.examples) < 10:
            self.examples.append(str(err))


def load_records(cfg: PrepareConfig, report: LoadReport | None = None) -> list[dict[str, str]]:
    """Validated records with ids; duplicates of the same content get `.1`, `.2`, ... suffixes.

    Raises:
        RecordError: for a bad record (unless `cfg.on_bad_record == "skip"`), an unreadable file, or
            no records at all.
        FileNotFoundError: if the input file does not exist.
    """
    report = report if report is not None else LoadReport()
    if cfg.format != "hf" and not Path(cfg.input).exists():
        raise FileNotFoundError(f"{cfg.input}: no such data file (dataset {cfg.dataset!r})")
    source = cfg.input if cfg.format != "hf" or not cfg.hf_split else f"{cfg.input} [split {cfg.hf_split}]"
    records, seen = [], {}
    for location, raw, error in _raw_records(cfg):
        report.read += 1
        try:
            if error is not None:
                raise error
            record = _validate(source, location, raw, cfg.fields)
        except RecordError as err:
            if cfg.on_bad_record == "error":
                raise
            report.skip(err)
            continue
        base = record_id(record)
        seen[base] = seen.get(base, -1) + 1
        record["id"] = base if seen[base] == 0 else f"{base}.{seen[base]}"
        record["dataset"] = cfg.dataset
        records.append(record)
    report.kept = len(records)
    if not records:
        detail = f" ({report.read} read, all skipped: {report.skipped})" if report.read else ""
        raise RecordError(f"{source}: no records{detail}")
    return records


def skipped_path(out: Path) -> Path:
    """Where `prepare` writes the skip counts: beside the output."""
    return out.with_name(out.name + ".skipped.json")


def prepare(cfg: PrepareConfig) -> int:
    """Load, validate and write the records parquet; returns the record count.

    With `on_bad_record="skip"` the counts of skipped records by reason go to `<out>.skipped.json`
    (written even when nothing was skipped, so a run's data loss is always on record); with
    `"error"` a stale counts file is removed. Nothing is written when loading fails.
    """

    report = LoadReport()
    records = load_records(cfg, report)
    counts = skipped_path(cfg.out)
    if cfg.on_bad_record == "skip":
        with atomic_path(counts) as tmp:
            summary = {"input": str(cfg.input), "dataset": cfg.dataset, "read": report.read, "kept": report.kept,
                       "skipped": report.skipped, "n_skipped": sum(report.skipped.values()),
                       "examples": report.examples}  # fmt: skip
            tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        if report.skipped:
            log.warning("%s: skipped %d bad record(s): %s", cfg.input, sum(report.skipped.values()), report.skipped)
    write_table(pd.DataFrame(records), cfg.out, RECORDS)
    if cfg.on_bad_record == "error":
        counts.unlink(missing_ok=True)
    return len(records)
