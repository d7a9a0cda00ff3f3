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

``--mask realistic``: a training batch whose prompt and padding do not count, the case the trainer
used to hand the losses. A batch of ``--batch`` rows (default 4) of ``tokens / batch`` positions
(default 4 x 256) is masked by :func:`realistic_labels`: per row a prompt prefix and right padding, seeded,
56% of the positions counted on average (580 of 1024 at the default shape). Every loss is measured, each
in a fresh process, twice on the same logits:

* ``before`` (``full_*`` columns): the ``(B, T, V)`` logits of every position with the masked labels, what
  the losses got before the trainer applied the output layer at counted positions only
  (``kdlm/training/output_rows.py``);
* ``after`` (``counted_*`` columns): the ``(1, N, V)`` logits of the N counted positions, every label
  counted, what the trainer hands the losses now.

Both are kdlm's implementation (no reference runs), and in both processes the floor runs over the N
counted rows only (two ``log_softmax`` calls on a ``(1, N, V)`` tensor): ``x floor`` compares each case
with the least work the counted tokens need. The figures of each row:

* ``before ms`` / ``after ms`` and their ``x floor`` (``x_floor_full``, ``x_floor_counted``: each over its
  own process's floor; ``floor ms`` is the after process's, ``full_floor_ms`` the before one's). The check
  ``ok_time`` is ``after x floor <= 1.5``.
* memory, per case: ``in MB``, what the logits (student and teacher) and labels add to resident memory
  (``full_inputs_mb``, ``counted_inputs_mb``), and ``extra MB``, the peak extra memory of forward+backward
  as above (gradient and working memory; ``full_mem_mb``, ``counted_mem_mb``). Their sums
  (``full_logits_mb``, ``counted_logits_mb``) are the logits memory of a training step's loss: it follows
  the counted tokens after, and all positions before. ``tensors`` and ``ok_memory`` are the after case's,
  in units of one ``(1, N, V)`` tensor, as above.
* ``loss_full`` / ``loss_counted``: the loss's value in either case (equal: the same loss).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
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
from kdlm.losses import IGNORE_INDEX, LOSSES
from kdlm.losses.reference import REFERENCE

WORKER = "kdlm.bench.losses"  # this module, run as the measurement worker
DEFAULT_OUT = Path("results/bench/losses.parquet")
DEFAULT_REALISTIC_OUT = Path("results/bench/losses_realistic.parquet")
MAX_X_FLOOR = 2.0  # ok_time of the all-counted case: x floor <= 2
MAX_X_FLOOR_COUNTED = 1.5  # ok_time of --mask realistic: the counted rows' x floor <= 1.5



def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The measurement settings every row records."""
    return {"vocab": args.vocab, "dtype": args.dtype, "device": args.device, "chunk_size": args.chunk_size,
            "threads": threads(), "repeats": args.repeats}  # fmt: skip

def _status_kb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return float(line.split()[1])
    return math.nan


def realistic_labels(batch: int, seq: int, vocab: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(batch, seq) labels with each row's prompt prefix and right padding masked (``IGNORE_INDEX``).

    Row b counts the positions ``P_b <= t < seq - Q_b``: a prompt of ``P_b`` ~ U{0.1 seq .. 0.4 seq}
    positions, right padding of ``Q_b`` ~ U{0 .. 0.38 seq}, so that 56% of the positions count on
    average (at 4 x 256: 580 of 1024, 56.6%); targets uniform in [0, vocab). Seeded (0): the same mask
    on every call.
    """
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(int(0.1 * seq), int(0.4 * seq) + 1, (batch,), generator=g)  # (B,)
    pad = torch.randint(0, int(0.38 * seq) + 1, (batch,), generator=g)  # (B,)
    y = torch.randint(0, vocab, (batch, seq), generator=g)  # (B, T)
    t = torch.arange(seq)  # (T,)
    counted = (t >= prompt[:, None]) & (t < seq - pad[:, None])  # (B, T)
    return y.masked_fill_(~counted, IGNORE_INDEX).to(device)


def _inputs(spec: dict[str, Any], device: torch.device, dtype: torch.dtype):
    """The measurement's student (leaf), teacher, labels and the floor's input.

    ``mask`` ``all``: (1, tokens, V), every label counted; the floor runs on the student. ``realistic``:
    a (batch, tokens / batch, V) batch masked by :func:`realistic_labels`, with ``layout`` ``full`` (the
    (B, T, V) logits and masked labels, the path before the trainer applied the output layer at counted
    positions only) or ``counted`` (the (1, N, V) rows of the same logits at the counted positions, every
    label counted: what the trainer hands the losses now); the floor runs on the (1, N, V) counted rows.
    """
    N, V = spec["tokens"], spec["vocab"]
    g = torch.Generator(device).manual_seed(0)
    if spec.get("mask", "all") == "all":
        s = (torch.randn(1, N, V, generator=g, device=device) * 3).to(dtype).requires_grad_()  # (1, N, V)
        t = (torch.randn(1, N, V, generator=g, device=device) * 3).to(dtype)  # (1, N, V)
        y = torch.randint(0, V, (1, N), generator=g, device=device)  # (1, N)
        return s, t, y, s
    B = spec["batch"]
    T = N // B
    y = realistic_labels(B, T, V, device)  # (B, T)
    idx = (y.view(-1) != IGNORE_INDEX).nonzero().squeeze(1)  # (n,) counted positions
    s = (torch.randn(B, T, V, generator=g, device=device) * 3).to(dtype)  # (B, T, V)
    t = (torch.randn(B, T, V, generator=g, device=device) * 3).to(dtype)  # (B, T, V)
    if spec["layout"] == "full":
        return s.requires_grad_(), t, y, None
    rows = s.view(-1, V).index_select(0, idx).unsqueeze(0).requires_grad_()  # (1, n, V)
    return rows, t.view(-1, V).index_select(0, idx).unsqueeze(0), y.view(-1)[idx].view(1, -1), rows


def measure(spec: dict[str, Any]) -> dict[str, float]:
    """Time, the floor's time and peak extra memory of one implementation (one worker process).

    ``spec``: ``tokens``, ``vocab``, ``repeats``, ``impl`` (``kdlm``, ``reference`` or ``floor``),
    ``loss`` and optionally ``device``, ``dtype``, ``chunk_size`` (kdlm's hparam) and ``mask``
    (``all``, the default, or ``realistic`` with ``batch`` and ``layout``: :func:`_inputs`).
    Besides the figures, ``inputs_mb`` (what the logits and labels add to resident memory; NaN off
    Linux), ``loss_value`` and ``counted`` (N) are returned.
    """
    V, kind, name = spec["vocab"], spec["impl"], spec["loss"]
    device, dtype = torch.device(spec.get("device", "cpu")), getattr(torch, spec.get("dtype", "float32"))
    cuda = device.type == "cuda"
    linux = not cuda and os.path.exists("/proc/self/clear_refs")

    def make(n: int, v: int):
        g = torch.Generator(device).manual_seed(0)
        s = (torch.randn(1, n, v, generator=g, device=device) * 3).to(dtype).requires_grad_()  # (1, n, V)
        t = (torch.randn(1, n, v, generator=g, device=device) * 3).to(dtype)  # (1, n, V)
        y = torch.randint(0, v, (1, n), generator=g, device=device)  # (1, n)
        return s, t, y

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def resident_mb() -> float:
        if cuda:
            return torch.cuda.memory_allocated(device) / 2**20
        return _status_kb("VmRSS") / 1024 if linux else math.nan

    if kind == "floor":
        step = floor_step
    else:
        fn = (LOSSES if kind == "kdlm" else REFERENCE)[name]
        hparams = {"chunk_size": spec["chunk_size"]} if kind == "kdlm" and spec.get("chunk_size") else {}

        def step(s, t, y):
            value = fn(s, t, y, **hparams)
            value.backward()
            s.grad = None
            return value.detach()

    step(*make(8, 64))  # warm-up: lazy initialization, thread pool, CUDA context and kernels
    floor_step(*make(8, 64))
    sync()
    rss0 = resident_mb()
    s, t, y, f = _inputs(spec, device, dtype)
    sync()
    inputs_mb = resident_mb() - rss0
    if f is None:  # the floor over the counted rows of a (B, T, V) batch: their (1, N, V) copy
        f = s.detach().view(-1, V).index_select(0, (y.view(-1) != IGNORE_INDEX).nonzero().squeeze(1)).unsqueeze(0)
    counted = int((y != IGNORE_INDEX).sum())
    sync()
    if cuda:  # the caching allocator's peak beyond the inputs, gradient included
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        value = step(s, t, y)
        sync()
        extra_mb = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    else:
        if linux:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        before = _status_kb("VmRSS")
        value = step(s, t, y)
        extra_mb = (_status_kb("VmHWM") - before) / 1024 if linux else math.nan

    def timed(fn, *args) -> float:
        sync()
        t0 = time.perf_counter()
        fn(*args)
        sync()
        return time.perf_counter() - t0

    # the floor is timed in turn with the step, in the same process, so that a machine whose speed drifts
    # (shared hosts do) moves both sides of the ratio alike; it runs over the counted rows only
    times, floors = [], []
    for _ in range(spec["repeats"]):
        times.append(timed(step, s, t, y))
        floors.append(timed(floor_step, f, None, None))
    return {
        "time_ms": 1000 * median(times), "floor_ms": 1000 * median(floors), "peak_extra_mb": extra_mb,
        "inputs_mb": inputs_mb, "loss_value": float(value) if value is not None else math.nan, "counted": counted,
    }  # fmt: skip


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
    mask = getattr(args, "mask", "all")
    if mask == "realistic" and (args.batch < 1 or args.tokens % args.batch):
        raise ValueError(f"--mask realistic needs --tokens a multiple of --batch >= 1, got {args.tokens}, {args.batch}")
    out = args.out if args.out is not None else (DEFAULT_OUT if mask == "all" else DEFAULT_REALISTIC_OUT)
    base = {"tokens": args.tokens, "vocab": args.vocab, "repeats": args.repeats, "device": args.device, "dtype": args.dtype,
            "chunk_size": args.chunk_size}  # fmt: skip
    element = torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
    if mask == "realistic":
        return _run_realistic(args, names, base, element, out)
    logits_mb = args.tokens * args.vocab * element / 2**20
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
            "ok_time": ours["time_ms"] <= MAX_X_FLOOR * ours["floor_ms"],
            "ok_memory": ours["peak_extra_mb"] <= 1.5 * logits_mb,
            "ok_speedup": bool(speedup >= 4) if name in ("atkd", "dkd") and not args.no_reference else None,
            "tokens": args.tokens,
            **_settings(args),
        })  # fmt: skip
    write_rows(rows, out)
    if args.json:
        print(json.dumps({"floor_ms": floor_ms, "logits_mb": logits_mb, "rows": rows}, indent=1))
    else:
        _print_table(rows, floor_ms, logits_mb, args, out)
    return 0


def _run_realistic(args: argparse.Namespace, names: list[str], base: dict[str, Any], element: int, out: Path) -> int:
    """``--mask realistic``: every loss on the masked (B, T, V) batch and on its (1, N, V) counted rows."""
    base = {**base, "mask": "realistic", "batch": args.batch, "impl": "kdlm"}
    rows = []
    for name in names:
        full = in_fresh_process(WORKER, {**base, "loss": name, "layout": "full"})
        rows_ = in_fresh_process(WORKER, {**base, "loss": name, "layout": "counted"})
        n = rows_["counted"]
        counted_mb = n * args.vocab * element / 2**20  # one (1, N, V) logits tensor
        rows.append({
            "loss": name,
            "full_ms": full["time_ms"],
            "counted_ms": rows_["time_ms"],
            "floor_ms": rows_["floor_ms"],
            "full_floor_ms": full["floor_ms"],
            "x_floor_full": full["time_ms"] / full["floor_ms"],
            "x_floor_counted": rows_["time_ms"] / rows_["floor_ms"],
            "full_inputs_mb": full["inputs_mb"],
            "counted_inputs_mb": rows_["inputs_mb"],
            "full_mem_mb": full["peak_extra_mb"],
            "counted_mem_mb": rows_["peak_extra_mb"],
            "full_logits_mb": full["inputs_mb"] + full["peak_extra_mb"],
            "counted_logits_mb": rows_["inputs_mb"] + rows_["peak_extra_mb"],
            "counted_mem_tensors": rows_["peak_extra_mb"] / counted_mb,
            "ok_time": rows_["time_ms"] <= MAX_X_FLOOR_COUNTED * rows_["floor_ms"],
            "ok_memory": rows_["peak_extra_mb"] <= 1.5 * counted_mb,
            "loss_full": full["loss_value"],
            "loss_counted": rows_["loss_value"],
            "mask": "realistic",
            "batch": args.batch,
            "seq": args.tokens // args.batch,
            "tokens": args.tokens,
            "counted": n,
            "counted_fraction": n / args.tokens,
            **_settings(args),
        })  # fmt: skip
    write_rows(rows, out)
    floor_ms = median([r["floor_ms"] for r in rows])
    if args.json:
        print(json.dumps({"floor_ms": floor_ms, "rows": rows}, indent=1))
    else:
        _print_realistic(rows, floor_ms, args, out)
    return 0


def _print_table(rows: list[dict[str, Any]], floor_ms: float, logits_mb: float, args: argparse.Namespace, out: Path) -> None:
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
    console_ = console(140)
    console_.print(result)
    console_.print(f"wrote {out}")


def _print_realistic(rows: list[dict[str, Any]], floor_ms: float, args: argparse.Namespace, out: Path) -> None:
    r0 = rows[0]
    B, T, n = r0["batch"], r0["seq"], r0["counted"]
    result = table(
        f"kdlm bench losses --mask realistic: {B} x {T} tokens with prompt and padding masked, N = {n} counted "
        f"({100 * n / (B * T):.1f}%), V={args.vocab}, {args.dtype}, {where(args.device)}; floor (2x log_softmax "
        f"over the N counted rows) = {floor_ms:.0f} ms (median over the rows); before: (B, T, V) logits, masked "
        f"labels; after: (1, N, V) logits of the counted rows; MB: logits + labels in, peak extra (gradient, work)",
        ("loss", "before ms", "x floor", "after ms", "floor ms", "x floor", "",
         "before in MB", "extra MB", "after in MB", "extra MB", "tensors", ""),
        left=("loss",),
    )  # fmt: skip
    for r in rows:
        result.add_row(
            r["loss"], f"{r['full_ms']:.0f}", f"{r['x_floor_full']:.2f}", f"{r['counted_ms']:.0f}",
            f"{r['floor_ms']:.0f}", f"{r['x_floor_counted']:.2f}", mark(r["ok_time"]),
            f"{r['full_inputs_mb']:.0f}", f"{r['full_mem_mb']:.0f}", f"{r['counted_inputs_mb']:.0f}",
            f"{r['counted_mem_mb']:.0f}", f"{r['counted_mem_tensors']:.2f}", mark(r["ok_memory"]),
        )  # fmt: skip
    console_ = console(150)
    console_.print(result)
    console_.print(f"wrote {out}")


if __name__ == "__main__":
    worker_main(measure)
