"""``kdlm bench losses``: time and peak extra memory of every KD loss, kdlm's and the straightforward one.

For every loss in :data:`kdlm.losses.LOSSES` it measures the forward+backward time (median of
``--repeats`` runs, after one warm-up run) and the peak extra memory of kdlm's chunked implementation and
of its straightforward full-tensor version (``REFERENCE``, the versions the tests check kdlm's against
in float64; both follow the losses' definitions in ``docs/design.md``), in the same run and on the same
inputs, plus the floor (:func:`kdlm.bench.common.floor_step`).

Inputs: ``--tokens`` counted tokens (shape ``(1, tokens, vocab)``, every label counted), student and
teacher logits drawn i.i.d. from N(0, 3^2) (peaked like real LM logits), float32 on CPU with all threads
torch uses by default unless ``--dtype`` (bfloat16, float16) and ``--device cuda`` say otherwise. The
student logits are a leaf with ``requires_grad``; the gradient it receives counts as extra memory.

Memory (CPU): each (loss, implementation) pair runs in a fresh Python process
(:func:`kdlm.bench.common.in_fresh_process`). The process warms torch up on a tiny shape, allocates and
touches the inputs, then resets the kernel's resident-set high-water mark (writing ``5`` to
``/proc/self/clear_refs``), runs forward+backward once, and reports ``VmHWM - VmRSS(before)`` from
``/proc/self/status``: the peak of resident memory beyond the inputs, including the gradient, the
allocator's overheads and any memory the allocator held on to. Only Linux has the memory column
(elsewhere it is NaN). On CUDA the memory column is the caching allocator's peak (``max_memory_allocated``)
beyond what was allocated before the call. Times are then taken in the same process (on CUDA between
``synchronize`` calls).

The floor is timed in every measurement's process, in turn with the loss (loss, floor, loss, floor, ...),
and each loss's ``x floor`` is its median time over the median floor of the same process: on a shared
machine whose speed drifts by 10-20% within a minute, a floor taken once at the start would move every
ratio with the drift.

The figures of each row (also the parquet's columns):

* ``kdlm ms`` / ``ref ms``: median forward+backward time of kdlm's loss / the straightforward version;
  ``speedup`` is their ratio (how much faster kdlm's is).
* ``floor ms``: the floor's median time in kdlm's process; ``x floor`` = ``kdlm ms`` / ``floor ms``, the
  loss's cost in units of the least any KD loss must do. Its check (``ok_time``) is ``x floor <= 2``.
* ``kdlm MB`` / ``ref MB``: peak extra memory; ``tensors`` is kdlm's in units of one logits tensor
  (``tokens x vocab`` elements of ``--dtype``). Its check (``ok_memory``) is ``<= 1.5`` tensors, i.e.
  the gradient (one tensor) plus working memory of at most half a tensor.
* ``ok_speedup`` (ATKD and DKD only, the losses whose straightforward versions materialize several
  masked copies of the vocabulary dimension): ``speedup >= 4``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Any

import torch

from kdlm.bench.common import (
    console,
    floor_step,
    in_fresh_process,
    mark,
    median,
    table,
    threads,
    where,
    worker_main,
    write_rows,
)
from kdlm.losses import LOSSES
from kdlm.losses.reference import REFERENCE

WORKER = "kdlm.bench.losses"  # this module, run as the measurement worker


def _status_kb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return float(line.split()[1])
    return math.nan


def measure(spec: dict[str, Any]) -> dict[str, float]:
    """Time, the floor's time and peak extra memory of one implementation (one worker process).

    ``spec``: ``tokens``, ``vocab``, ``repeats``, ``impl`` (``kdlm``, ``reference`` or ``floor``),
    ``loss`` and optionally ``device``, ``dtype`` and ``chunk_size`` (kdlm's hparam).
    """
    N, V, kind, name = spec["tokens"], spec["vocab"], spec["impl"], spec["loss"]
    device, dtype = torch.device(spec.get("device", "cpu")), getattr(torch, spec.get("dtype", "float32"))
    cuda = device.type == "cuda"

    def make(n: int, v: int):
        g = torch.Generator(device).manual_seed(0)
        s = (torch.randn(1, n, v, generator=g, device=device) * 3).to(dtype).requires_grad_()  # (1, n, V)
        t = (torch.randn(1, n, v, generator=g, device=device) * 3).to(dtype)  # (1, n, V)
        y = torch.randint(0, v, (1, n), generator=g, device=device)  # (1, n)
        return s, t, y

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    if kind == "floor":
        step = floor_step
    else:
        fn = (LOSSES if kind == "kdlm" else REFERENCE)[name]
        hparams = {"chunk_size": spec["chunk_size"]} if kind == "kdlm" and spec.get("chunk_size") else {}

        def step(s, t, y):
            fn(s, t, y, **hparams).backward()
            s.grad = None

    step(*make(8, 64))  # warm-up: lazy initialization, thread pool, CUDA context and kernels
    floor_step(*make(8, 64))
    s, t, y = make(N, V)
    sync()
    if cuda:  # the caching allocator's peak beyond the inputs, gradient included
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step(s, t, y)
        sync()
        extra_mb = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    else:
        linux = os.path.exists("/proc/self/clear_refs")
        if linux:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        before = _status_kb("VmRSS")
        step(s, t, y)
        extra_mb = (_status_kb("VmHWM") - before) / 1024 if linux else math.nan

    def timed(fn) -> float:
        sync()
        t0 = time.perf_counter()
        fn(s, t, y)
        sync()
        return time.perf_counter() - t0

    # the floor is timed in turn with the step, on the same inputs in the same process, so that a
    # machine whose speed drifts (shared hosts do) moves both sides of the ratio alike
    times, floors = [], []
    for _ in range(spec["repeats"]):
        times.append(timed(step))
        floors.append(timed(floor_step))
    return {"time_ms": 1000 * median(times), "floor_ms": 1000 * median(floors), "peak_extra_mb": extra_mb}


def run(args: argparse.Namespace) -> int:
    """Run ``kdlm bench losses``: measure, write ``args.out``, print the table (or JSON); returns 0."""
    names = args.losses or list(LOSSES)
    unknown = sorted(set(names) - set(LOSSES))
    if unknown:
        raise ValueError(f"unknown losses {unknown}; known: {', '.join(LOSSES)}")
    if args.repeats < 3:
        raise ValueError(f"--repeats must be >= 3, got {args.repeats}")
    if args.tokens < 1 or args.vocab < 2:
        raise ValueError(f"--tokens must be >= 1 and --vocab >= 2, got {args.tokens}, {args.vocab}")
    base = {"tokens": args.tokens, "vocab": args.vocab, "repeats": args.repeats, "device": args.device, "dtype": args.dtype,
            "chunk_size": args.chunk_size}  # fmt: skip
    logits_mb = args.tokens * args.vocab * torch.empty((), dtype=getattr(torch, args.dtype)).element_size() / 2**20
    # kdlm's side first, the memory-hungry references after, so that the page-fault storms of the
    # references do not slow down the measurements they are compared with
    mine = {name: in_fresh_process(WORKER, {**base, "impl": "kdlm", "loss": name}) for name in names}
    floor_ms = median([m["floor_ms"] for m in mine.values()])
    nan = {"time_ms": math.nan, "peak_extra_mb": math.nan}
    refs = {name: nan if args.no_reference else in_fresh_process(WORKER, {**base, "impl": "reference", "loss": name})
            for name in names}  # fmt: skip
    rows = []
    for name in names:
        ours, ref = mine[name], refs[name]
        speedup = ref["time_ms"] / ours["time_ms"]
        rows.append({
            "loss": name,
            "kdlm_ms": ours["time_ms"],
            "reference_ms": ref["time_ms"],
            "speedup": speedup,
            "floor_ms": ours["floor_ms"],
            "x_floor": ours["time_ms"] / ours["floor_ms"],
            "kdlm_mem_mb": ours["peak_extra_mb"],
            "reference_mem_mb": ref["peak_extra_mb"],
            "kdlm_mem_tensors": ours["peak_extra_mb"] / logits_mb,
            "reference_mem_tensors": ref["peak_extra_mb"] / logits_mb,
            "ok_time": ours["time_ms"] <= 2 * ours["floor_ms"],
            "ok_memory": ours["peak_extra_mb"] <= 1.5 * logits_mb,
            "ok_speedup": bool(speedup >= 4) if name in ("atkd", "dkd") and not args.no_reference else None,
            "tokens": args.tokens,
            "vocab": args.vocab,
            "dtype": args.dtype,
            "device": args.device,
            "chunk_size": args.chunk_size,
            "threads": threads(),
            "repeats": args.repeats,
        })  # fmt: skip
    write_rows(rows, args.out)
    if args.json:
        print(json.dumps({"floor_ms": floor_ms, "logits_mb": logits_mb, "rows": rows}, indent=1))
    else:
        _print_table(rows, floor_ms, logits_mb, args)
    return 0


def _print_table(rows: list[dict[str, Any]], floor_ms: float, logits_mb: float, args: argparse.Namespace) -> None:
    result = table(
        f"kdlm bench losses: {args.tokens} tokens x V={args.vocab}, {args.dtype}, {where(args.device)}; "
        f"floor (2x log_softmax) = {floor_ms:.0f} ms (median over the rows); one logits tensor = {logits_mb:.0f} MB",
        ("loss", "kdlm ms", "floor ms", "x floor", "", "ref ms", "speedup", "", "kdlm MB", "tensors", "", "ref MB"),
        left=("loss",),
    )
    for r in rows:
        result.add_row(
            r["loss"], f"{r['kdlm_ms']:.0f}", f"{r['floor_ms']:.0f}", f"{r['x_floor']:.2f}", mark(r["ok_time"]),
            f"{r['reference_ms']:.0f}", f"{r['speedup']:.1f}x", mark(r["ok_speedup"]),
            f"{r['kdlm_mem_mb']:.0f}", f"{r['kdlm_mem_tensors']:.2f}", mark(r["ok_memory"]),
            f"{r['reference_mem_mb']:.0f}",
        )  # fmt: skip
    out = console(140)
    out.print(result)
    out.print(f"wrote {args.out}")


if __name__ == "__main__":
    worker_main(measure)
