"""`kdlm bench losses`: the CLI wiring and one measurement at a tiny shape (no timing assertions)."""

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
    assert (args.tokens, args.vocab, args.repeats, args.json) == (1024, 50272, 5, False)
    args = _parse("losses", "--tokens", "64", "--vocab", "1000", "--json")
    assert (args.tokens, args.vocab, args.json) == (64, 1000, True)


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


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown losses"):
        bench.run(_parse("losses", "--losses", "nope"))
    with pytest.raises(ValueError, match="repeats"):
        bench.run(_parse("losses", "--repeats", "1"))


def test_the_command_line_imports_no_benchmark():
    # `kdlm` registers these options on every call and each measurement's worker imports the package:
    # the benchmark modules (torch, transformers) are imported only by the sub-command that runs
    code = "import sys, kdlm.bench; print(sorted(m for m in sys.modules if m.startswith(('kdlm.bench.', 'torch'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
