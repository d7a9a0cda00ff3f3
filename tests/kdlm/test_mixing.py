"""`kdlm mix`: every source's rows, online shares, provenance, determinism, and what the trainer can read."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from kdlm.data.mixing import SOURCES, MixConfig, mix, online_rows
from kdlm.data.records import PrepareConfig, prepare
from kdlm.generation import GenerateConfig, generate_for_records
from kdlm.schemas import GENERATED, MIXED, RECORDS, read_metadata, read_table


@pytest.fixture(scope="module")
def data(lab, tmp_path_factory) -> dict:
    """30 lab records and a real (tiny) teacher's answers to them."""
    root = tmp_path_factory.mktemp("mix")
    (root / "src.json").write_text(json.dumps(json.loads(lab["train_json"].read_text())[:30]))
    prepare(PrepareConfig(input=root / "src.json", out=root / "records.parquet", dataset="lab"))
    generate_for_records(str(lab["student"]), root / "records.parquet", root / "gen.parquet",
                         GenerateConfig(max_new_tokens=3, batch_size=30), "t")  # fmt: skip
    return {"root": root, "records": root / "records.parquet", "generated": root / "gen.parquet",
            "gt": read_table(root / "records.parquet", RECORDS).set_index("id")["output"],
            "teacher": read_table(root / "gen.parquet", GENERATED).set_index("id")["response"]}  # fmt: skip


def _mix(data, tmp_path, source, **kwargs) -> pd.DataFrame:
    out = tmp_path / f"{source}.parquet"
    assert mix(data["records"], out, MixConfig(source=source, **kwargs), generated_path=data["generated"]) == 30
    return read_table(out, MIXED)


EXPECTED = {  # source: (response from, origin, online rows of 30 at ratio 0.5, ratio column)
    "gt": ("gt", "gt", 0, 0.0),
    "teacher": ("teacher", "teacher", 0, 0.0),
    "student": ("gt", "gt", 30, 1.0),
    "mix_token": ("teacher", "teacher", 30, 0.5),
    "mix_request_teacher": ("teacher", "teacher", 15, 0.5),
    "mix_request_gt": ("gt", "gt", 15, 0.5),
}


@pytest.mark.parametrize("source", SOURCES)
def test_each_source_has_the_rows_its_docstring_promises(tmp_path, data, source):
    response_from, origin, n_online, ratio = EXPECTED[source]
    df = _mix(data, tmp_path, source, seed=4)
    assert df["id"].tolist() == data["gt"].index.tolist()
    assert df["response"].tolist() == data[response_from].loc[df["id"]].tolist()
    assert (df["origin"] == origin).all()
    assert int(df["online"].sum()) == n_online
    assert (df["source"] == source).all() and (df["ratio"] == ratio).all() and (df["seed"] == 4).all()
    assert read_metadata(tmp_path / f"{source}.parquet")["n_online"] == n_online


def test_mix_request_online_rows_follow_ratio_and_seed_deterministically(tmp_path, data):
    first = _mix(data, tmp_path, "mix_request_teacher", ratio=0.3, seed=1)
    assert int(first["online"].sum()) == 9
    again = _mix(data, tmp_path, "mix_request_teacher", ratio=0.3, seed=1)
    pd.testing.assert_frame_equal(first, again)
    other = _mix(data, tmp_path, "mix_request_teacher", ratio=0.3, seed=2)
    assert other["online"].tolist() != first["online"].tolist()
    # independent of the records' order: the draw hangs on (seed, id) only
    ids = first["id"].tolist()
    flags = dict(zip(ids, online_rows(ids, 0.3, 1), strict=True))
    assert dict(zip(ids[::-1], online_rows(ids[::-1], 0.3, 1), strict=True)) == flags
    assert _mix(data, tmp_path, "mix_request_gt", ratio=0.0)["online"].sum() == 0
    assert _mix(data, tmp_path, "mix_request_gt", ratio=1.0)["online"].all()


def test_trainer_reads_offline_sources_and_refuses_online_rows(tmp_path, data):
    from kdlm.training.data import load_pairs

    _mix(data, tmp_path, "teacher")
    prompts, responses = load_pairs(tmp_path / "teacher.parquet", "paper")
    assert responses == data["teacher"].tolist() and len(prompts) == 30
    _mix(data, tmp_path, "mix_request_gt")
    with pytest.raises(ValueError, match="15 rows are marked online"):
        load_pairs(tmp_path / "mix_request_gt.parquet", "paper")


def test_bad_mixes_are_named(tmp_path, data):
    with pytest.raises(ValueError, match=r"unknown source 'teachers'; allowed: \['gt', 'teacher', 'student'"):
        MixConfig(source="teachers")
    with pytest.raises(ValueError, match=r"mix ratio must be in \[0, 1\], got 1.5"):
        MixConfig(source="mix_token", ratio=1.5)
    with pytest.raises(ValueError, match=r"need the teacher's generated responses \(--generated\)"):
        mix(data["records"], tmp_path / "o.parquet", "mix_token")
    with pytest.raises(ValueError, match=r"gen.parquet: id '.*': the teacher answered a different prompt"):
        mix(data["records"], tmp_path / "o.parquet", "teacher", template="alpaca", generated_path=data["generated"])
    partial = tmp_path / "partial.parquet"
    read_table(data["generated"], GENERATED).iloc[:10].to_parquet(partial)
    with pytest.raises(ValueError, match=r"partial.parquet: no teacher response for 20 record\(s\)"):
        mix(data["records"], tmp_path / "o.parquet", "mix_request_teacher", generated_path=partial)
    assert not (tmp_path / "o.parquet").exists()
