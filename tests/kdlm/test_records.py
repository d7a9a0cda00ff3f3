"""`kdlm prepare`: every format loads to the same records; bad records fail naming file, record, field."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from kdlm.data.records import PrepareConfig, RecordError, prepare
from kdlm.schemas import RECORDS, SchemaError, read_table

RECORDS_IN = [
    {"instruction": "Add the numbers.", "input": "1 + 2", "output": "3"},
    {"instruction": "Name a colour.", "input": "", "output": "blue"},
    {"instruction": "Name a colour.", "input": "", "output": "blue"},
]


def _write(tmp_path, fmt):
    path = tmp_path / f"data.{fmt}"
    if fmt == "alpaca":
        path.write_text(json.dumps(RECORDS_IN))
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in RECORDS_IN) + "\n")
    elif fmt == "parquet":
        pd.DataFrame(RECORDS_IN).to_parquet(path)
    else:
        pd.DataFrame(RECORDS_IN).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("fmt", ["alpaca", "jsonl", "parquet", "csv"])
def test_every_format_gives_the_same_records_with_stable_ids(tmp_path, fmt):
    out = tmp_path / "out.parquet"
    assert prepare(PrepareConfig(input=_write(tmp_path, fmt), out=out, dataset="d", format=fmt)) == 3
    df = read_table(out, RECORDS)
    assert df[["instruction", "input", "output"]].to_dict(orient="records") == RECORDS_IN
    assert (df["dataset"] == "d").all()
    assert df["id"].is_unique
    assert df["id"][2] == df["id"][1] + ".1"
    # stable across reruns
    prepare(PrepareConfig(input=_write(tmp_path, fmt), out=tmp_path / "again.parquet", dataset="d", format=fmt))
    assert read_table(tmp_path / "again.parquet", RECORDS)["id"].tolist() == df["id"].tolist()


def test_field_mapping_reads_eval_set_layouts(tmp_path):
    path = tmp_path / "vicuna.jsonl"
    path.write_text(json.dumps({"question_id": 1, "text": "Why?", "category": "x", "answer": "Because."}) + "\n")
    out = tmp_path / "out.parquet"
    prepare(
        PrepareConfig(input=path, out=out, dataset="v", format="jsonl", fields={"instruction": "text", "output": "answer"})
    )
    row = read_table(out, RECORDS).iloc[0]
    assert (row.instruction, row.input, row.output) == ("Why?", "", "Because.")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": 5}\n', r"line 2: field 'output' must be a string"),
        ('{"instruction": "a", "output": "b"}\n{not json\n', r"line 2: invalid JSON"),
        ('{"instruction": "  ", "output": "b"}\n', r"line 1: field 'instruction' is empty"),
        ('{"instruction": "a"}\n', r"line 1: missing field 'output'"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    out = tmp_path / "out.parquet"
    with pytest.raises(RecordError, match=message) as err:
        prepare(PrepareConfig(input=path, out=out, dataset="d", format="jsonl"))
    assert str(path) in str(err.value)
    assert not out.exists(), "nothing may be written when input is bad"


def test_bad_record_in_alpaca_json_names_the_record_index(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([RECORDS_IN[0], {"instruction": "x", "input": ["list"], "output": "y"}]))
    with pytest.raises(RecordError, match=r"bad.json: record 1: field 'input' must be a string"):
        prepare(PrepareConfig(input=path, out=tmp_path / "o.parquet", dataset="d"))


def test_existing_output_survives_a_failed_prepare(tmp_path):
    out = tmp_path / "out.parquet"
    prepare(PrepareConfig(input=_write(tmp_path, "alpaca"), out=out, dataset="d"))
    before = out.read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    with pytest.raises(RecordError):
        prepare(PrepareConfig(input=bad, out=out, dataset="d"))
    assert out.read_bytes() == before


def test_unknown_format_and_wrong_columns_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown data format 'xml'"):
        PrepareConfig(input=tmp_path, out=tmp_path, dataset="d", format="xml")
    wrong = tmp_path / "wrong.parquet"
    pd.DataFrame({"id": ["a"], "text": ["b"]}).to_parquet(wrong)
    with pytest.raises(SchemaError, match=r"wrong.parquet: missing column 'instruction'"):
        read_table(wrong, RECORDS)
