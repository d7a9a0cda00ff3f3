"""`kdlm generate` at scale: shards written as it goes, resume after a kill, 2-way split, overlong prompts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from kdlm.data.records import PrepareConfig, prepare
from kdlm.generation import (
    GenerateConfig,
    generate_for_records,
    parse_shard,
    prompt_limit,
    shards_root,
)
from kdlm.schemas import GENERATED, RECORDS, read_metadata, read_table

KDLM = str(Path(sys.executable).parent / "kdlm")


@pytest.fixture(scope="module")
def records(lab, tmp_path_factory) -> Path:
    """40 lab records: enough for several shards, small enough to be quick."""
    root = tmp_path_factory.mktemp("shard-records")
    (root / "src.json").write_text(json.dumps(json.loads(lab["train_json"].read_text())[:40]))
    prepare(PrepareConfig(input=root / "src.json", out=root / "records.parquet", dataset="lab"))
    return root / "records.parquet"


def _run(lab, records, out, cfg, **kwargs) -> pd.DataFrame:
    generate_for_records(str(lab["teacher"]), records, out, cfg, "t", **kwargs)
    return read_table(out, GENERATED)


@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sampled"])
def test_two_way_sharded_equals_unsharded(tmp_path, lab, records, sample):
    cfg = GenerateConfig(max_new_tokens=8, batch_size=4, shard_size=6, sample=sample, temperature=1.3, seed=3)
    whole = _run(lab, records, tmp_path / "whole.parquet", cfg)
    assert not shards_root(tmp_path / "whole.parquet").exists(), "shards are removed once merged"

    out = tmp_path / "split.parquet"
    n0 = generate_for_records(str(lab["teacher"]), records, out, cfg, "t", shard=(0, 2))
    assert not out.exists(), "a shard job does not merge"
    with pytest.raises(ValueError, match=r"cannot merge, 3 of 7 shard\(s\) missing .* \(first: shard 1\)"):
        generate_for_records(str(lab["teacher"]), records, out, cfg, "t", merge_only=True)
    n1 = generate_for_records(str(lab["teacher"]), records, out, cfg, "t", shard=(1, 2))
    assert n0 + n1 == 40
    split = _run(lab, records, out, cfg, merge_only=True)
    pd.testing.assert_frame_equal(split, whole)
    assert split["id"].tolist() == read_table(records, RECORDS)["id"].tolist(), "records' order"
    assert read_metadata(out)["n_shards"] == 7


def test_shard_and_merge_options_are_checked(lab, records, tmp_path):
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    with pytest.raises(ValueError, match="--shard and --merge exclude each other"):
        generate_for_records(
            str(lab["teacher"]), records, tmp_path / "o.parquet", GenerateConfig(), "t", shard=(0, 2), merge_only=True
        )
    with pytest.raises(ValueError, match=r"unknown overlong policy 'drop'; allowed: \['truncate', 'skip'\]"):
        GenerateConfig(overlong="drop")
    with pytest.raises(ValueError, match=r"unknown generation backend 'tgi'; allowed: \['hf', 'vllm'\]"):
        GenerateConfig(backend="tgi")


def test_prompt_limit_is_the_context_minus_new_tokens():
    config = SimpleNamespace(max_position_embeddings=64)
    assert prompt_limit(config, GenerateConfig(max_new_tokens=16)) == 48
    assert prompt_limit(config, GenerateConfig(max_new_tokens=16, max_prompt_tokens=10)) == 10
    assert prompt_limit(SimpleNamespace(), GenerateConfig()) is None
    with pytest.raises(ValueError, match="max_new_tokens=64 leaves no room .* context of 64 tokens"):
        prompt_limit(config, GenerateConfig(max_new_tokens=64))


def test_overlong_prompts_are_truncated_or_skipped_and_counted(tmp_path, lab, records):
    from kdlm.data.mixing import mix
    from kdlm.schemas import MIXED

    lengths = read_table(_any_generated(tmp_path, lab, records), GENERATED)["n_prompt_tokens"]
    limit = int(lengths.median())
    n_over = int((lengths > limit).sum())
    assert 0 < n_over < 40

    cut = _run(lab, records, tmp_path / "cut.parquet", GenerateConfig(max_new_tokens=2, max_prompt_tokens=limit))
    assert len(cut) == 40 and cut["n_prompt_tokens"].max() == limit
    meta = read_metadata(tmp_path / "cut.parquet")["overlong"]
    assert (meta["policy"], meta["limit"], meta["truncated"], meta["skipped"]) == ("truncate", limit, n_over, 0)

    cfg = GenerateConfig(max_new_tokens=2, max_prompt_tokens=limit, overlong="skip")
    skipped = _run(lab, records, tmp_path / "skip.parquet", cfg)
    meta = read_metadata(tmp_path / "skip.parquet")["overlong"]
    assert len(skipped) == 40 - n_over and (meta["skipped"], meta["truncated"]) == (n_over, 0)
    assert set(meta["skipped_ids"]).isdisjoint(skipped["id"])
    # the teacher source leaves the skipped records out instead of failing on them
    mix(records, tmp_path / "mixed.parquet", "teacher", generated_path=tmp_path / "skip.parquet")
    assert read_table(tmp_path / "mixed.parquet", MIXED)["id"].tolist() == skipped["id"].tolist()


def _any_generated(tmp_path, lab, records) -> Path:
    out = tmp_path / "lengths.parquet"
    generate_for_records(str(lab["teacher"]), records, out, GenerateConfig(max_new_tokens=1, batch_size=40), "t")
    return out


def test_killed_generation_resumes_and_equals_an_uninterrupted_run(tmp_path, lab, records):
    """A real `kdlm generate` process is killed after its first shard; the rerun completes the rest."""
    options = ["--max-new-tokens", "16", "--batch-size", "2", "--shard-size", "2", "--threads", "1"]
    out = tmp_path / "killed.parquet"
    command = [KDLM, "generate", "--model", str(lab["teacher"]), "--name", "t", "--records", str(records),
               "--out", str(out), *options]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(shards_root(out).glob("*/shard-*.parquet")):
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "no shard written within 120 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not out.exists(), "killed before the end"
    done_before = len(list(shards_root(out).glob("*/shard-*.parquet")))
    assert 1 <= done_before < 20

    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resuming: {done_before} of 20 shard(s) already done" in result.stderr
    assert not shards_root(out).exists()

    cfg = GenerateConfig(max_new_tokens=16, batch_size=2, shard_size=2)
    whole = _run(lab, records, tmp_path / "whole.parquet", cfg)
    resumed = read_table(out, GENERATED)
    assert resumed["id"].is_unique and len(resumed) == 40
    pd.testing.assert_frame_equal(resumed, whole)
