"""Parquet contracts between stages (docs/design.md, "Stage contracts"): enforced when writing, checked
when reading.

A stage handed a file with the wrong columns fails here with the file and the column named, instead
of deep inside pandas with a KeyError.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kdlm.io import atomic_path
from kdlm.study import EVAL_METRICS

RECORDS = pa.schema(
    [
        ("id", pa.string()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("output", pa.string()),
        ("dataset", pa.string()),
    ]
)
GENERATED = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("response", pa.string()),
        ("model", pa.string()),
        ("n_prompt_tokens", pa.int64()),
        ("n_response_tokens", pa.int64()),
        ("finish_reason", pa.string()),
        ("decoding", pa.string()),
    ]
)
MIXED = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("response", pa.string()),
        ("origin", pa.string()),
        ("online", pa.bool_()),
    ]
)
EVAL = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("reference", pa.string()),
        ("prediction", pa.string()),
        *((m.column, pa.float64()) for m in EVAL_METRICS if m.scored),  # one per scored metric
        ("n_response_tokens", pa.int64()),
        ("finish_reason", pa.string()),
    ]
)
TRAIN_LOG = pa.schema(
    [
        ("step", pa.int64()),
        ("epoch", pa.float64()),
        ("loss", pa.float64()),
        ("lr", pa.float64()),
        ("grad_norm", pa.float64()),
        ("tokens_per_s", pa.float64()),
    ]
)
SUMMARY = pa.schema(
    [
        ("kind", pa.string()),
        ("model", pa.string()),
        ("student", pa.string()),
        ("teacher", pa.string()),
        ("source", pa.string()),
        ("method", pa.string()),
        ("seed", pa.int64()),
        ("task", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("n", pa.int64()),
    ]
)


_META_KEY = "kdlm"


class SchemaError(ValueError):
    """A parquet file does not have the columns its stage contract requires."""


def write_table(
    df, path: str | Path, schema: pa.Schema, extra_columns: bool = False, metadata: dict | None = None
) -> None:
    """Write `df` as parquet with `schema`'s columns and types, atomically.

    Args:
        extra_columns: keep columns beyond the schema (statistics, provenance) after the required ones.
        metadata: JSON-able description stored in the file (read back with `read_metadata`).
    """
    missing = [name for name in schema.names if name not in df.columns]
    if missing:
        raise SchemaError(f"{path}: cannot write, missing column(s) {missing}; required: {schema.names}")
    if extra_columns:
        extras = [c for c in df.columns if c not in schema.names]
        table = pa.Table.from_pandas(df[schema.names + extras], preserve_index=False)
        table = table.cast(pa.schema(list(schema) + [table.schema.field(c) for c in extras]))
    else:
        table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    if metadata is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: json.dumps(metadata)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_metadata(path: str | Path) -> dict:
    """The description `write_table(..., metadata=...)` stored in a parquet file ({} if none)."""
    meta = read_file_schema(path).metadata or {}
    raw = meta.get(_META_KEY.encode())
    return json.loads(raw) if raw else {}


def read_file_schema(path: str | Path) -> pa.Schema:
    """A parquet file's schema; a missing file, a directory or a file that is not parquet is one error
    naming the path."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise SchemaError(f"{path}: is a directory; a parquet file is expected")
    try:
        return pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise SchemaError(f"{path}: not a readable parquet file ({err})") from err


def read_table(path: str | Path, schema: pa.Schema):
    """Read a parquet file and check it has `schema`'s columns with compatible types; returns a DataFrame."""
    path = Path(path)
    file_schema = read_file_schema(path)
    for field in schema:
        if field.name not in file_schema.names:
            raise SchemaError(
                f"{path}: missing column {field.name!r}; has {file_schema.names}, required {schema.names}"
            )
        found = file_schema.field(field.name).type
        compatible = (
            found == field.type
            or (pa.types.is_integer(found) and pa.types.is_integer(field.type))
            or (pa.types.is_string(field.type) and pa.types.is_large_string(found))
        )
        if not compatible:
            raise SchemaError(f"{path}: column {field.name!r} has type {found}, expected {field.type}")
    return pq.read_table(path).to_pandas()
