"""`kdlm prepare` on real layouts: the eval sets' JSONL, Hugging Face data sets, nested fields, skipping."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kdlm.data.records import PrepareConfig, RecordError, prepare, skipped_path
from kdlm.schemas import RECORDS, read_table

KDLM = str(Path(sys.executable).parent / "kdlm")

# one line in the layout of each evaluation set (fields as distributed; values made up)
EVAL_LAYOUTS = {
    "dolly": {"topic": "open_qa", "instruction": "Why is the sky blue?", "input": "", "output": "Scattering.",
              "prompt": "Below is an instruction ..."},
    "self-inst": {"topic": "Grammarly", "instruction": "Fix the grammar.", "input": "me go home",
                  "output": "I go home.", "prompt": "Below is an instruction ..."},
    "vicuna": {"instruction": "Name a prime.", "category": "math", "prompt": "Below ...", "output": "7"},
    "koala": {"idx": 0, "instruction": "Say hi.", "prompt": "Below ...", "output": "Hi!"},
    "wizardlm": {"idx": 1, "instruction": "2 + 2?", "prompt": "Below ...", "output": "4"},
}  # fmt: skip


def _prepare(tmp_path, path, **kwargs):
    out = tmp_path / "out.parquet"
    n = prepare(PrepareConfig(input=path, out=out, dataset="d", **kwargs))
    return n, read_table(out, RECORDS)


@pytest.mark.parametrize("name", sorted(EVAL_LAYOUTS))
def test_eval_set_layouts_load_with_their_extra_fields_ignored(tmp_path, name):
    raw = EVAL_LAYOUTS[name]
    path = tmp_path / f"{name}.jsonl"
    path.write_text(json.dumps(raw) + "\n" + json.dumps({**raw, "output": "other"}) + "\n")
    n, df = _prepare(tmp_path, path, format="jsonl")
    assert n == 2
    assert list(df.columns) == RECORDS.names
    row = df.iloc[0]
    assert (row.instruction, row.input, row.output) == (raw["instruction"], raw.get("input", ""), raw["output"])


def test_dotted_paths_read_nested_fields_like_self_instruct_instances(tmp_path):
    path = tmp_path / "self-instruct.jsonl"
    raw = {"id": "seed_task_0", "name": "breakfast", "instruction": "Suggest a breakfast.", "is_classification": False,
           "instances": [{"input": "", "output": "Oatmeal."}, {"input": "x", "output": "y"}]}  # fmt: skip
    path.write_text(json.dumps(raw) + "\n")
    fields = {"input": "instances.0.input", "output": "instances.0.output"}
    _, df = _prepare(tmp_path, path, format="jsonl", fields=fields)
    assert df.iloc[0].output == "Oatmeal." and df.iloc[0].input == ""
    with pytest.raises(RecordError, match=r"line 1: missing field 'instances.5.output'"):
        _prepare(tmp_path, path, format="jsonl", fields={"output": "instances.5.output"})


def test_parquet_keeps_nested_values_for_dotted_paths(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "nested.parquet"
    pq.write_table(pa.Table.from_pylist([{"q": "Hi?", "a": {"text": "Hello."}}]), path)
    _, df = _prepare(tmp_path, path, format="parquet", fields={"instruction": "q", "output": "a.text"})
    assert (df.iloc[0].instruction, df.iloc[0].output) == ("Hi?", "Hello.")


def test_hf_saved_dataset_and_local_directory_through_datasets(tmp_path):
    import datasets

    rows = [{"instruction": f"Say {i}.", "input": "", "output": str(i), "category": "x"} for i in range(3)]
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(saved)
    n, df = _prepare(tmp_path, str(saved), format="hf", hf_split="train")
    assert n == 3 and df["output"].tolist() == ["0", "1", "2"]
    assert _prepare(tmp_path, str(saved), format="hf", hf_split="test")[0] == 1
    with pytest.raises(ValueError, match=r"no split 'dev'; has \['test', 'train'\]"):
        _prepare(tmp_path, str(saved), format="hf", hf_split="dev")
    with pytest.raises(ValueError, match="several splits"):
        _prepare(tmp_path, str(saved), format="hf")

    # a directory of data files goes through datasets.load_dataset (the hub-id code path)
    files = tmp_path / "files"
    files.mkdir()
    (files / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    n, df2 = _prepare(tmp_path, str(files), format="hf", hf_split="train")
    assert df2["id"].tolist() == df["id"].tolist(), "ids are content hashes, equal across formats"
    with pytest.raises(ValueError, match="Unknown split"):
        _prepare(tmp_path, str(files), format="hf", hf_split="nope")


def test_hf_bad_records_are_named_by_split_and_row(tmp_path):
    import datasets

    saved = tmp_path / "saved"
    datasets.Dataset.from_list([{"instruction": "a", "output": "b"}, {"instruction": "", "output": "c"}]).save_to_disk(saved)
    with pytest.raises(RecordError, match=r"saved \[split train\]: row 1: field 'instruction' is empty"):
        _prepare(tmp_path, str(saved), format="hf", hf_split="train")


BAD_JSONL = "\n".join([
    '{"instruction": "ok", "output": "fine"}',
    '{not json',
    '["a list"]',
    '{"instruction": "x"}',
    '{"instruction": "x", "output": 3}',
    '{"instruction": "x", "output": null}',
    '{"instruction": " ", "output": "y"}',
    '{"instruction": "ok too", "input": null, "output": "fine"}',
]) + "\n"  # fmt: skip
BAD_MESSAGES = [
    r"line 2: invalid JSON",
    r"line 3: expected an object, got list",
    r"line 4: missing field 'output'",
    r"line 5: field 'output' must be a string, got int",
    r"line 6: field 'output' is null",
    r"line 7: field 'instruction' is empty",
]


@pytest.mark.parametrize("message", BAD_MESSAGES)
def test_every_bad_record_kind_stops_with_its_message_and_writes_nothing(tmp_path, message):
    line = int(message.split(":")[0].split()[1])
    path = tmp_path / "bad.jsonl"
    lines = BAD_JSONL.splitlines()
    path.write_text(lines[0] + "\n" + "\n" * (line - 2) + lines[line - 1] + "\n")
    out = tmp_path / "out.parquet"
    with pytest.raises(RecordError, match=message) as err:
        prepare(PrepareConfig(input=path, out=out, dataset="d", format="jsonl"))
    assert str(path) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"], "no output, no temporary file"


def test_skip_drops_bad_records_and_counts_them_by_reason(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(BAD_JSONL)
    out = tmp_path / "out.parquet"
    assert prepare(PrepareConfig(input=path, out=out, dataset="d", format="jsonl", on_bad_record="skip")) == 2
    assert read_table(out, RECORDS)["instruction"].tolist() == ["ok", "ok too"]
    counts = json.loads(skipped_path(out).read_text())
    assert counts["skipped"] == {"invalid_json": 1, "not_an_object": 1, "missing_field:output": 1,
                                 "not_a_string:output": 1, "null_field:output": 1, "empty_instruction": 1}  # fmt: skip
    assert (counts["read"], counts["kept"], counts["n_skipped"]) == (8, 2, 6)
    assert any("line 2: invalid JSON" in e for e in counts["examples"])
    # switching back to `error` on good data removes the stale counts
    good = tmp_path / "good.jsonl"
    good.write_text('{"instruction": "ok", "output": "fine"}\n')
    prepare(PrepareConfig(input=good, out=out, dataset="d", format="jsonl"))
    assert not skipped_path(out).exists()


def test_skip_with_nothing_left_is_an_error_and_writes_nothing(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": ""}\n{nope\n')
    out = tmp_path / "out.parquet"
    with pytest.raises(RecordError, match=r"no records \(2 read, all skipped"):
        prepare(PrepareConfig(input=path, out=out, dataset="d", format="jsonl", on_bad_record="skip"))
    assert not out.exists() and not skipped_path(out).exists()


def test_whole_file_errors_name_the_file(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[{"instruction": "a", "output": "b"},')
    with pytest.raises(RecordError, match=r"bad.json: invalid JSON at line 1"):
        prepare(PrepareConfig(input=bad_json, out=tmp_path / "o.parquet", dataset="d", on_bad_record="skip"))
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_text("hello")
    with pytest.raises(RecordError, match=r"x.parquet: not a readable parquet file"):
        prepare(PrepareConfig(input=not_parquet, out=tmp_path / "o.parquet", dataset="d", format="parquet"))
    with pytest.raises(FileNotFoundError, match=r"missing.jsonl: no such data file"):
        prepare(PrepareConfig(input=tmp_path / "missing.jsonl", out=tmp_path / "o.parquet", dataset="d", format="jsonl"))
    with pytest.raises(ValueError, match=r"unknown on_bad_record 'ignore'; allowed: \['error', 'skip'\]"):
        PrepareConfig(input=bad_json, out=tmp_path / "o.parquet", dataset="d", on_bad_record="ignore")
    assert not (tmp_path / "o.parquet").exists()


def test_cli_skip_and_fields(tmp_path):
    path = tmp_path / "vicuna.jsonl"
    path.write_text(json.dumps(EVAL_LAYOUTS["vicuna"]) + "\n{broken\n")
    out = tmp_path / "o.parquet"
    result = subprocess.run(
        [KDLM, "prepare", "--input", str(path), "--format", "jsonl", "--dataset", "v", "--on-bad-record", "skip",
         "--fields", '{"output": "output"}', "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "1 records" in result.stdout
    assert json.loads(skipped_path(out).read_text())["skipped"] == {"invalid_json": 1}
