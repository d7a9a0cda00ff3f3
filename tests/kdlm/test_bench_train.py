"""`kdlm bench train`: the CLI wiring and tiny runs on the session's lab pair (no timing assertions).

kdlm's side is always measured; TRL's side needs the optional `bench` extra and its test is skipped
without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import sys

import pandas as pd
import pytest

import kdlm.bench as bench
import kdlm.training.trainer as trainer_module
from kdlm.bench import train as bench_train
from kdlm.data.mixing import mix
from kdlm.training.config import MethodConfig


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def _tiny(lab, tmp_path, *extra: str) -> argparse.Namespace:
    return _parse("train", "--teacher", str(lab["teacher"]), "--student", str(lab["student"]), "--steps", "2",
                  "--warmup-steps", "1", "--batch-size", "4", "--max-length", "48", "--repeats", "1", "--json",
                  "--out", str(tmp_path / "bench" / "train.parquet"), *extra)  # fmt: skip


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_defaults_are_the_acceptance_setting():
    args = _parse("train")
    assert (args.steps, args.batch_size, args.max_length, args.losses) == (20, 32, 128, ["forward", "atkd"])
    assert (args.teacher, args.student, args.no_trl, args.json) == (None, None, False, False)
    assert str(args.out) == "results/bench/train.parquet"


def test_kdlm_side_without_trl(lab, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # as if the bench extra were not installed: import trl fails
    assert bench.run(_tiny(lab, tmp_path)) == 0
    captured = capsys.readouterr()
    assert "pip install -e .[bench]" in captured.err
    figures = json.loads(captured.out)
    assert figures["trl"] is None and figures["kdlm_vs_trl"] is None and figures["ok_kdlm_vs_trl"] is None
    rows = {r["side"]: r for r in figures["rows"]}
    sides = [f"kdlm_{loss}{signal}" for loss in ("forward", "atkd") for signal in ("", "_exact", "_compact")]
    assert set(rows) == set(sides)
    # the exact cache's first loss is the live teacher's (its hidden states were computed in other batches: float
    # roundoff, on a loss near 0 for this untrained pair)
    for loss in ("forward", "atkd"):
        assert rows[f"kdlm_{loss}_exact"]["first_loss"] == pytest.approx(rows[f"kdlm_{loss}"]["first_loss"], rel=1e-4)
        assert figures["exact_vs_live"][loss] == pytest.approx(
            rows[f"kdlm_{loss}_exact"]["tokens_per_s"] / rows[f"kdlm_{loss}"]["tokens_per_s"])
    assert set(figures["cache_build_seconds"]) == {"exact", "compact"}
    assert all(_positive(v) for v in figures["cache_bytes_per_token"].values())
    errors = {(e["loss"], e["k"]): e for e in figures["compact_errors"]}
    assert {k for _, k in errors} == {16, 64, 256} and len(errors) == 3 * 10, "every distillation loss at every k"
    assert all(math.isfinite(e["relative_error"]) and e["relative_error"] >= 0 for e in errors.values())
    assert errors[("forward", 256)]["relative_error"] < errors[("forward", 16)]["relative_error"]
    for r in rows.values():
        assert _positive(r["tokens_per_s"]) and _positive(r["all_tokens_per_s"]) and _positive(r["first_loss"])
        assert 0 < r["counted_tokens"] < r["tokens"] <= 2 * 4 * 48, "two timed steps of 4 examples of <= 48 tokens"
    assert figures["same_batches"], "every side trains on the same batches"
    assert figures["atkd_vs_forward"] == pytest.approx(rows["kdlm_atkd"]["tokens_per_s"] / rows["kdlm_forward"]["tokens_per_s"])
    table = pd.read_parquet(tmp_path / "bench" / "train.parquet")
    assert table["side"].tolist() == sides
    assert (table["tokens_per_s"] > 0).all()
    assert not list((tmp_path / "bench").glob(".*")), "the parquet is written atomically"


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl is not installed (pip install -e .[bench])")
def test_trl_side_computes_the_same_forward_kl(lab, tmp_path, capsys):
    assert bench.run(_tiny(lab, tmp_path, "--losses", "forward", "--signals", "live", "--error-k")) == 0
    figures = json.loads(capsys.readouterr().out)
    rows = {r["side"]: r for r in figures["rows"]}
    assert set(rows) == {"kdlm_forward", "trl_gkd"} and figures["trl"]
    assert _positive(rows["trl_gkd"]["tokens_per_s"])
    assert figures["same_batches"]
    # GKD at beta=0 and kdlm's forward loss are the same number on the same first batch and weights
    assert rows["trl_gkd"]["first_loss"] == pytest.approx(rows["kdlm_forward"]["first_loss"], rel=1e-4)
    assert figures["kdlm_vs_trl"] == pytest.approx(figures["kdlm_forward_tokens_per_s"] / figures["trl_tokens_per_s"])
    assert len(pd.read_parquet(tmp_path / "bench" / "train.parquet")) == 2


class _Stop(Exception):
    pass


def test_bench_trains_with_the_trainers_arguments(lab, lab_records, tmp_path, monkeypatch):
    # the arguments `kdlm distill` trains with: catch them where train() hands them to the trainer
    seen = {}

    def capture(*args, **kwargs):
        seen["args"] = kwargs["args"]
        raise _Stop

    monkeypatch.setattr(trainer_module, "DistillTrainer", capture)
    mix(lab_records["train"], tmp_path / "gt.parquet", "gt")
    cfg = bench_train.train_config(_tiny(lab, tmp_path))
    with pytest.raises(_Stop):
        trainer_module.train(student_path=str(lab["student"]), teacher_path=str(lab["teacher"]),
                             data_path=tmp_path / "gt.parquet", out_dir=tmp_path / "run", method=MethodConfig(loss="forward"),
                             cfg=cfg, checkpoint_dir=tmp_path / "ckpt")  # fmt: skip
    trained = seen["args"].to_dict()
    assert trained == trainer_module.training_arguments(cfg, tmp_path / "ckpt").to_dict()
    benched = bench_train.kdlm_arguments(cfg, tmp_path / "ckpt").to_dict()
    differ = {key for key in trained if trained[key] != benched[key]}
    assert differ == set(bench_train.BENCH_OVERRIDES), "the bench differs from training only in its documented overrides"
    assert benched == {**trained, **bench_train.BENCH_OVERRIDES}
    assert (benched["max_steps"], benched["per_device_train_batch_size"]) == (3, 4)  # the bench's steps and batch


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl is not installed (pip install -e .[bench])")
def test_trl_config_shares_every_training_argument(lab, tmp_path):
    from transformers import TrainingArguments

    kdlm_args = bench_train.kdlm_arguments(bench_train.train_config(_tiny(lab, tmp_path)), tmp_path / "trl")
    config = bench_train.trl_config(kdlm_args, 48)
    for field in dataclasses.fields(TrainingArguments):
        assert getattr(config, field.name) == getattr(kdlm_args, field.name), field.name
    assert (config.beta, config.lmbda, config.seq_kd, config.gradient_checkpointing, config.bf16) == (0.0, 0.0, False, False, False)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (("--steps", "0"), "must be >= 1"),
        (("--losses", "nope"), "unknown or non-distillation"),
        (("--losses", "sft"), "unknown or non-distillation"),
        (("--teacher", "x"), "both --teacher and --student"),
    ],
)
def test_bad_arguments(argv, match):
    with pytest.raises(ValueError, match=match):
        bench.run(_parse("train", "--no-trl", *argv))


def test_long_sequences_and_the_memory_plan_of_the_pair(lab, tmp_path, capsys, monkeypatch):
    """--lengthen fills max_length (prompt cut from the left, about half counted); the JSON holds the memory
    plan's estimate for the pair (GPU peak memory is only measured on a GPU)."""
    monkeypatch.setitem(sys.modules, "trl", None)
    assert bench.run(_tiny(lab, tmp_path, "--lengthen", "12", "--losses", "forward")) == 0
    figures = json.loads(capsys.readouterr().out)
    row = figures["rows"][0]
    assert row["tokens"] > 0.9 * 2 * 4 * 48, "every sequence fills max_length"
    assert 0.2 < row["counted_tokens"] / row["tokens"] < 0.8
    assert _positive(figures["planned_gb"]) and figures["bf16"] is False
