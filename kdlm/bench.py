"""Benchmarks that print figures: ``kdlm bench losses`` (and later ``kdlm bench train``).

``kdlm bench losses`` measures, for every loss in :data:`kdlm.losses.LOSSES`, the forward+backward time
(median of ``--repeats`` runs, after one warm-up run) and the peak extra memory of kdlm's chunked
implementation and of the straightforward full-tensor one in :mod:`kdlm.losses_reference`, in the same
run and on the same inputs, plus the floor: the time of two ``log_softmax`` calls on one logits tensor
(the least any KD loss must do in its forward pass).

Inputs: ``--tokens`` counted tokens (shape ``(1, tokens, vocab)``, every label counted), student and
teacher logits drawn i.i.d. from N(0, 3^2) (peaked like real LM logits), float32, CPU, all threads torch
uses by default. The student logits are a leaf with ``requires_grad``; the gradient it receives counts as
extra memory.

How memory is measured (CPU): each (loss, implementation) pair runs in a fresh Python subprocess. The
subprocess warms torch up on a tiny shape, allocates and touches the inputs, then resets the kernel's
resident-set high-water mark (writing ``5`` to ``/proc/self/clear_refs``), runs forward+backward once,
and reports ``VmHWM - VmRSS(before)`` from ``/proc/self/status``: the peak of resident memory beyond the
inputs, including the gradient, the allocator's overheads and any memory the allocator held on to. A
fresh process per measurement keeps one measurement's freed-but-cached memory out of the next. Only
Linux is supported for the memory column (elsewhere it is NaN). Times are then taken in the same
subprocess.

Acceptance (issue 3): every loss <= 2x the floor in time and <= 1.5 logits tensors of peak extra memory;
ATKD and DKD >= 4x faster than their straightforward versions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("results/bench/losses.parquet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` subcommands (``losses``) to ``parser``."""
    sub = parser.add_subparsers(dest="bench_command", required=True, metavar="{losses}")
    p = sub.add_parser("losses", help="time and memory of every loss vs its straightforward version")
    p.add_argument("--tokens", type=int, default=1024, help="counted tokens B*T (default 1024)")
    p.add_argument("--vocab", type=int, default=50272, help="vocabulary size V (default 50272, OPT's)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the median is kept (>= 3)")
    p.add_argument("--losses", nargs="+", default=None, metavar="NAME", help="only these losses (default all)")
    p.add_argument("--no-reference", action="store_true", help="skip the straightforward implementations")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"parquet file to write (default {DEFAULT_OUT})")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    p.set_defaults(bench_func=_bench_losses)


def run(args: argparse.Namespace) -> int:
    """Run the bench subcommand chosen in ``args``; returns the exit status."""
    return args.bench_func(args)


# --------------------------------------------------------------------------------------------------
# the subprocess side: one measurement
# --------------------------------------------------------------------------------------------------


def _status_kb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return float(line.split()[1])
    return math.nan


def _measure(spec: dict[str, Any]) -> dict[str, float]:
    """Time and peak extra memory of one implementation (runs inside the worker subprocess)."""
    import time

    import torch

    from kdlm.losses import LOSSES
    from kdlm.losses_reference import REFERENCE

    N, V, kind, name = spec["tokens"], spec["vocab"], spec["impl"], spec["loss"]

    def make(n: int, v: int):
        g = torch.Generator().manual_seed(0)
        s = (torch.randn(1, n, v, generator=g) * 3).requires_grad_()  # (1, n, V)
        t = torch.randn(1, n, v, generator=g) * 3  # (1, n, V)
        y = torch.randint(0, v, (1, n), generator=g)  # (1, n)
        return s, t, y

    if kind == "floor":

        def step(s, t, y):
            torch.log_softmax(s.detach(), dim=-1)
            torch.log_softmax(s.detach(), dim=-1)
    else:
        fn = (LOSSES if kind == "kdlm" else REFERENCE)[name]

        def step(s, t, y):
            fn(s, t, y).backward()
            s.grad = None

    step(*make(8, 64))  # warm-up: lazy initialization, thread pool
    s, t, y = make(N, V)
    linux = os.path.exists("/proc/self/clear_refs")
    if linux:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _status_kb("VmRSS")
    step(s, t, y)
    peak = _status_kb("VmHWM") if linux else math.nan
    times = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        step(s, t, y)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"time_ms": 1000 * times[len(times) // 2], "peak_extra_mb": (peak - before) / 1024}


def _worker() -> None:
    spec = json.loads(sys.argv[2])
    print(json.dumps(_measure(spec)))


# --------------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------------


def _in_subprocess(spec: dict[str, Any]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "kdlm.bench", "--worker", json.dumps(spec)],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker failed for {spec}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _bench_losses(args: argparse.Namespace) -> int:
    from kdlm.losses import LOSSES

    names = args.losses or list(LOSSES)
    unknown = sorted(set(names) - set(LOSSES))
    if unknown:
        raise ValueError(f"unknown losses {unknown}; known: {', '.join(LOSSES)}")
    if args.repeats < 3:
        raise ValueError(f"--repeats must be >= 3, got {args.repeats}")
    if args.tokens < 1 or args.vocab < 2:
        raise ValueError(f"--tokens must be >= 1 and --vocab >= 2, got {args.tokens}, {args.vocab}")
    base = {"tokens": args.tokens, "vocab": args.vocab, "repeats": args.repeats}
    logits_mb = args.tokens * args.vocab * 4 / 2**20
    # kdlm's side and its floor first, the memory-hungry references after, so that the page-fault storms
    # of the references do not slow down the measurements they are compared with
    floor = _in_subprocess({**base, "impl": "floor", "loss": ""})
    mine = {name: _in_subprocess({**base, "impl": "kdlm", "loss": name}) for name in names}
    nan = {"time_ms": math.nan, "peak_extra_mb": math.nan}
    refs = {name: nan if args.no_reference else _in_subprocess({**base, "impl": "reference", "loss": name}) for name in names}
    rows = []
    for name in names:
        ours, ref = mine[name], refs[name]
        speedup = ref["time_ms"] / ours["time_ms"]
        row = {
            "loss": name,
            "kdlm_ms": ours["time_ms"],
            "reference_ms": ref["time_ms"],
            "speedup": speedup,
            "floor_ms": floor["time_ms"],
            "x_floor": ours["time_ms"] / floor["time_ms"],
            "kdlm_mem_mb": ours["peak_extra_mb"],
            "reference_mem_mb": ref["peak_extra_mb"],
            "kdlm_mem_tensors": ours["peak_extra_mb"] / logits_mb,
            "reference_mem_tensors": ref["peak_extra_mb"] / logits_mb,
            "ok_time": ours["time_ms"] <= 2 * floor["time_ms"],
            "ok_memory": ours["peak_extra_mb"] <= 1.5 * logits_mb,
            "ok_speedup": bool(speedup >= 4) if name in ("atkd", "dkd") and not args.no_reference else None,
            "tokens": args.tokens,
            "vocab": args.vocab,
            "dtype": "float32",
            "device": "cpu",
            "threads": _threads(),
            "repeats": args.repeats,
        }
        rows.append(row)
    _write(rows, args.out)
    if args.json:
        print(json.dumps({"floor_ms": floor["time_ms"], "logits_mb": logits_mb, "rows": rows}, indent=1))
    else:
        _print_table(rows, floor["time_ms"], logits_mb, args)
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _write(rows: list[dict[str, Any]], out: Path) -> None:
    import pandas as pd

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    pd.DataFrame(rows).to_parquet(tmp, index=False)
    os.replace(tmp, out)


def _print_table(rows: list[dict[str, Any]], floor_ms: float, logits_mb: float, args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    def mark(ok: bool | None) -> str:
        return "" if ok is None else ("[green]ok[/]" if ok else "[red]FAIL[/]")

    table = Table(
        title=f"kdlm bench losses: {args.tokens} tokens x V={args.vocab}, float32, CPU, {_threads()} threads; "
        f"floor (2x log_softmax) = {floor_ms:.0f} ms; one logits tensor = {logits_mb:.0f} MB"
    )
    for col in ("loss", "kdlm ms", "x floor", "", "ref ms", "speedup", "", "kdlm MB", "tensors", "", "ref MB"):
        table.add_column(col, justify="left" if col == "loss" else "right")
    for r in rows:
        table.add_row(
            r["loss"], f"{r['kdlm_ms']:.0f}", f"{r['x_floor']:.2f}", mark(r["ok_time"]),
            f"{r['reference_ms']:.0f}", f"{r['speedup']:.1f}x", mark(r["ok_speedup"]),
            f"{r['kdlm_mem_mb']:.0f}", f"{r['kdlm_mem_tensors']:.2f}", mark(r["ok_memory"]),
            f"{r['reference_mem_mb']:.0f}",
        )
    console = Console(width=140)
    console.print(table)
    console.print(f"wrote {args.out}")


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "--worker":
    _worker()
