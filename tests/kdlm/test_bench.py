"""`kdlm bench losses`: the CLI wiring and measurements at tiny shapes, all tokens counted and with the
realistic prompt-and-padding mask (no timing assertions)."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys

import pandas as pd
import pytest

import kdlm.bench as bench
from kdlm.bench import losses


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_arguments_and_defaults():
    args = _parse("losses")
    assert (args.tokens, args.vocab, args.repeats, args.json, args.mask, args.batch) == (1024, 50272, 5, False, "all", 4)
    args = _parse("losses", "--tokens", "64", "--vocab", "1000", "--json", "--mask", "realistic", "--batch", "2")
    assert (args.tokens, args.vocab, args.json, args.mask, args.batch) == (64, 1000, True, "realistic", 2)
    assert (losses.DEFAULT_OUT, losses.DEFAULT_REALISTIC_OUT) == (bench.DEFAULT_LOSSES_OUT, bench.DEFAULT_LOSSES_REALISTIC_OUT)


@pytest.mark.parametrize("impl", ["kdlm", "reference", "floor"])
def test_measure_in_process(impl):
    got = losses.measure({"tokens": 8, "vocab": 50, "repeats": 3, "impl": impl, "loss": "atkd"})
    assert got["time_ms"] > 0
    assert got["floor_ms"] > 0  # every measurement times its own floor, in turn with the step
    assert math.isnan(got["peak_extra_mb"]) or got["peak_extra_mb"] >= 0


def test_bench_losses_writes_parquet_and_json(tmp_path, capsys):
    out = tmp_path / "bench" / "losses.parquet"
    args = _parse("losses", "--tokens", "8", "--vocab", "40", "--losses", "forward", "--out", str(out), "--json")
    assert bench.run(args) == 0
    df = pd.read_parquet(out)
    assert list(df["loss"]) == ["forward"]
    assert {"kdlm_ms", "reference_ms", "floor_ms", "kdlm_mem_mb", "reference_mem_mb", "ok_time"} <= set(df.columns)
    row = df.iloc[0]
    assert row["x_floor"] == pytest.approx(row["kdlm_ms"] / row["floor_ms"])  # the floor of the same process
    assert '"rows"' in capsys.readouterr().out
    assert not list(out.parent.glob(".*tmp"))


def test_realistic_mask_masks_a_prompt_prefix_and_right_padding():
    import torch

    y = losses.realistic_labels(4, 256, 50272)
    assert y.shape == (4, 256) and torch.equal(y, losses.realistic_labels(4, 256, 50272))  # seeded
    counted = y != losses.IGNORE_INDEX
    assert int(counted.sum()) == 580  # 56.6% of 1024, the 56%
    for row in counted:  # one run of counted positions per row, after a prompt and before padding
        pos = row.nonzero().squeeze(1)
        assert pos[0] >= int(0.1 * 256) and pos[-1] < 256 and int(pos[-1] - pos[0] + 1) == len(pos)
    assert int(y[counted].min()) >= 0 and int(y[counted].max()) < 50272


@pytest.mark.parametrize("layout", ["full", "counted"])
def test_measure_realistic_in_process(layout):
    spec = {"tokens": 32, "vocab": 50, "repeats": 3, "impl": "kdlm", "loss": "atkd", "mask": "realistic", "batch": 4,
            "layout": layout}  # fmt: skip
    got = losses.measure(spec)
    assert got["time_ms"] > 0 and got["floor_ms"] > 0
    assert got["counted"] == int((losses.realistic_labels(4, 8, 50) != losses.IGNORE_INDEX).sum())
    assert math.isfinite(got["loss_value"]) and got["loss_value"] > 0


def test_bench_losses_realistic_reports_before_and_after(tmp_path, capsys):
    # the masked (B, T, V) batch ("before") and its (1, N, V) counted rows ("after"), every loss, the floor over
    # the counted rows in each process: a real run at a tiny shape
    out = tmp_path / "realistic.parquet"
    args = _parse("losses", "--mask", "realistic", "--tokens", "32", "--vocab", "64", "--batch", "4", "--repeats", "3",
                  "--losses", "forward", "atkd", "--out", str(out), "--json")  # fmt: skip
    assert bench.run(args) == 0
    df = pd.read_parquet(out)
    assert list(df["loss"]) == ["forward", "atkd"]
    for col in ("full_ms", "counted_ms", "floor_ms", "full_floor_ms", "x_floor_full", "x_floor_counted", "ok_time",
                "full_inputs_mb", "counted_inputs_mb", "full_mem_mb", "counted_mem_mb", "ok_memory"):  # fmt: skip
        assert col in df.columns
    n = int((losses.realistic_labels(4, 8, 64) != losses.IGNORE_INDEX).sum())
    for _, row in df.iterrows():
        assert (row["batch"], row["seq"], row["tokens"], row["counted"]) == (4, 8, 32, n)
        assert 0 < row["counted"] < row["tokens"] and row["counted_fraction"] == pytest.approx(n / 32)
        assert min(row["full_ms"], row["counted_ms"], row["floor_ms"], row["full_floor_ms"]) > 0
        assert row["x_floor_full"] == pytest.approx(row["full_ms"] / row["full_floor_ms"])
        assert row["x_floor_counted"] == pytest.approx(row["counted_ms"] / row["floor_ms"])
        assert row["ok_time"] == (row["counted_ms"] <= 1.5 * row["floor_ms"])
        assert row["loss_counted"] == pytest.approx(row["loss_full"], rel=1e-5)  # the same loss either way
        for col in ("full_inputs_mb", "counted_inputs_mb", "full_mem_mb", "counted_mem_mb"):
            assert math.isnan(row[col]) or row[col] >= 0
    printed = capsys.readouterr().out
    assert '"rows"' in printed and '"x_floor_counted"' in printed


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown losses"):
        bench.run(_parse("losses", "--losses", "nope"))
    with pytest.raises(ValueError, match="repeats"):
        bench.run(_parse("losses", "--repeats", "1"))
    with pytest.raises(ValueError, match="multiple of --batch"):
        bench.run(_parse("losses", "--mask", "realistic", "--tokens", "30", "--batch", "4"))


def test_the_command_line_imports_no_benchmark():
    # `kdlm` registers these options on every call and each measurement's worker imports the package:
    # the benchmark modules (torch, transformers) are imported only by the sub-command that runs
    code = "import sys, kdlm.bench; print(sorted(m for m in sys.modules if m.startswith(('kdlm.bench.', 'torch'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
