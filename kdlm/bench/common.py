"""What the benchmarks share: the floor, measuring in a fresh process, the device in words, the output.

The floor is the least work any KD loss must do in its forward pass: two ``log_softmax`` calls over one
logits tensor (the student's and the teacher's distributions). ``kdlm bench losses`` divides each loss's
time by it (``x floor``), timed in the same process and in turn with the loss.

A measurement runs in a fresh Python process (:func:`in_fresh_process`) so that the memory one
measurement freed but the allocator kept cached does not lower the next one's peak: the benchmark module
is run as ``python -m <module> --worker <spec as JSON>`` and prints its figures as JSON on its last line
(:func:`worker_main`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from kdlm.io import atomic_path

WORKER_FLAG = "--worker"


def floor_step(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> None:
    """The floor: two ``log_softmax`` calls over the student logits ``s`` (``t`` and ``y`` unused)."""
    torch.log_softmax(s.detach(), dim=-1)
    torch.log_softmax(s.detach(), dim=-1)


def median(xs: list[float]) -> float:
    """The median of ``xs`` (the mean of the middle two for an even count)."""
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


def in_fresh_process(module: str, spec: dict[str, Any]) -> dict[str, float]:
    """Run ``module``'s worker on ``spec`` in a new Python process; returns the figures it printed."""
    out = subprocess.run(
        [sys.executable, "-m", module, WORKER_FLAG, json.dumps(spec)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker failed for {spec}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker_main(measure: Callable[[dict[str, Any]], dict[str, float]]) -> None:
    """The worker side of :func:`in_fresh_process`: ``measure`` the spec in ``sys.argv``, print JSON."""
    if len(sys.argv) != 3 or sys.argv[1] != WORKER_FLAG:
        raise SystemExit(f"usage: python -m <benchmark module> {WORKER_FLAG} SPEC_JSON")
    print(json.dumps(measure(json.loads(sys.argv[2]))))


def threads() -> int:
    """torch's CPU threads, as the benchmarks report them."""
    return torch.get_num_threads()


def where(device: str) -> str:
    """The device in words for table titles: "CPU, 2 threads" or the CUDA device's name."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU, {threads()} threads"


def write_rows(rows: list[dict[str, Any]], out: Path) -> None:
    """The rows as a parquet file at ``out``, written atomically."""
    with atomic_path(out) as tmp:
        pd.DataFrame(rows).to_parquet(tmp, index=False)


def mark(ok: bool | None) -> str:
    """A check's verdict for a table cell: empty when not checked, else green ok or red FAIL."""
    return "" if ok is None else ("[green]ok[/]" if ok else "[red]FAIL[/]")


def table(title: str, columns: tuple[str, ...], left: tuple[str, ...]) -> Table:
    """A rich table with ``columns``, the ``left`` ones left-aligned and the figures right-aligned."""
    result = Table(title=title)
    for col in columns:
        result.add_column(col, justify="left" if col in left else "right")
    return result


def console(width: int) -> Console:
    """The console the benchmarks print their tables to (fixed width: the tables fit without wrapping)."""
    return Console(width=width)
