"""Benchmarks that print figures: ``kdlm bench losses``, ``kdlm bench generate``, ``kdlm bench train``.

``kdlm bench losses`` measures, for every loss in :data:`kdlm.losses.LOSSES`, the forward+backward time
(median of ``--repeats`` runs, after one warm-up run) and the peak extra memory of kdlm's chunked
implementation and of the straightforward full-tensor one in :mod:`kdlm.losses_reference`, in the same
run and on the same inputs, plus the floor: the time of two ``log_softmax`` calls on one logits tensor
(the least any KD loss must do in its forward pass). The floor is timed in every measurement's process,
in turn with the loss (loss, floor, loss, floor, ...), and each loss's ``x floor`` is its median time
over the median floor of the same process: on a shared machine whose speed drifts by 10-20% within a
minute, a floor taken once at the start would move every ratio with the drift.

Inputs: ``--tokens`` counted tokens (shape ``(1, tokens, vocab)``, every label counted), student and
teacher logits drawn i.i.d. from N(0, 3^2) (peaked like real LM logits), float32 on CPU with all threads
torch uses by default unless ``--dtype`` (bfloat16, float16) and ``--device cuda`` say otherwise. The
student logits are a leaf with ``requires_grad``; the gradient it receives counts as
extra memory.

How memory is measured (CPU): each (loss, implementation) pair runs in a fresh Python subprocess. The
subprocess warms torch up on a tiny shape, allocates and touches the inputs, then resets the kernel's
resident-set high-water mark (writing ``5`` to ``/proc/self/clear_refs``), runs forward+backward once,
and reports ``VmHWM - VmRSS(before)`` from ``/proc/self/status``: the peak of resident memory beyond the
inputs, including the gradient, the allocator's overheads and any memory the allocator held on to. A
fresh process per measurement keeps one measurement's freed-but-cached memory out of the next. Only
Linux is supported for the memory column (elsewhere it is NaN). On CUDA the memory column is the caching
allocator's peak (``max_memory_allocated``) beyond what was allocated before the call. Times are then
taken in the same subprocess (on CUDA between ``synchronize`` calls).

Acceptance (issue 3): every loss <= 2x the floor in time and <= 1.5 logits tensors of peak extra memory;
ATKD and DKD >= 4x faster than their straightforward versions.

``kdlm bench generate`` measures new tokens per second of kdlm's batched generation
(:func:`kdlm.generation.generate_responses`: length-sorted, left-padded batches, KV cache) against the
straightforward loop that calls ``model.generate`` on one prompt at a time (KV cache too), greedy, on
the same model, the same ``--prompts`` lab prompts and in the same process, after one warm-up call on
each side. Only real response tokens count (up to and excluding EOS) on both sides. Without
``--model`` it builds a lab teacher of the default study's size (LLaMA, 4 layers x 256, random
weights) in a temporary directory. Acceptance (issue 4): batched >= 3x the loop at batch 16.

``kdlm bench train`` (:mod:`kdlm.bench_train`) measures distillation tokens/s of kdlm's trainer (forward
KL and ATKD, ground-truth responses) against TRL's ``GKDTrainer`` with ``beta=0, lmbda=0`` (off-policy
forward KL) on the same lab teacher/student pair, batches, batch size, sequence length and steps, in the
same run. Acceptance (issue 5): kdlm >= 1.0x TRL's tokens/s; ATKD >= 0.8x forward KL's.
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
_DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2}  # name -> bytes per element


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` subcommands (``losses``, ``generate``, ``train``) to ``parser``."""
    from kdlm.bench_train import add_train_arguments

    sub = parser.add_subparsers(dest="bench_command", required=True, metavar="{losses,generate,train}")
    p = sub.add_parser("losses", help="time and memory of every loss vs its straightforward version")
    p.add_argument("--tokens", type=int, default=1024, help="counted tokens B*T (default 1024)")
    p.add_argument("--vocab", type=int, default=50272, help="vocabulary size V (default 50272, OPT's)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement; the median is kept (>= 3, default 5)")
    p.add_argument("--losses", nargs="+", default=None, metavar="NAME", help="only these losses (default all)")
    p.add_argument("--no-reference", action="store_true", help="skip the straightforward implementations")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"parquet file to write (default {DEFAULT_OUT})")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]; on CUDA memory is the allocator's peak")
    p.add_argument("--dtype", default="float32", choices=sorted(_DTYPES), help="logits dtype (default float32)")
    p.add_argument("--chunk-size", type=int, default=None, help="kdlm's chunk_size hparam (default: each loss's default)")
    p.set_defaults(bench_func=_bench_losses)
    _add_generate_arguments(sub)
    add_train_arguments(sub)


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

    def floor_step(s, t, y):
        torch.log_softmax(s.detach(), dim=-1)
        torch.log_softmax(s.detach(), dim=-1)

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
    return {"time_ms": 1000 * _median(times), "floor_ms": 1000 * _median(floors), "peak_extra_mb": extra_mb}


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


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
    base = {"tokens": args.tokens, "vocab": args.vocab, "repeats": args.repeats, "device": args.device, "dtype": args.dtype,
            "chunk_size": args.chunk_size}
    logits_mb = args.tokens * args.vocab * _DTYPES[args.dtype] / 2**20
    # kdlm's side first, the memory-hungry references after, so that the page-fault storms of the
    # references do not slow down the measurements they are compared with
    mine = {name: _in_subprocess({**base, "impl": "kdlm", "loss": name}) for name in names}
    floor_ms = _median([m["floor_ms"] for m in mine.values()])
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
            "threads": _threads(),
            "repeats": args.repeats,
        }
        rows.append(row)
    _write(rows, args.out)
    if args.json:
        print(json.dumps({"floor_ms": floor_ms, "logits_mb": logits_mb, "rows": rows}, indent=1))
    else:
        _print_table(rows, floor_ms, logits_mb, args)
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _where(device: str) -> str:
    """The device in words for table titles: "CPU, 2 threads" or the CUDA device's name."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU, {_threads()} threads"


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
        title=f"kdlm bench losses: {args.tokens} tokens x V={args.vocab}, {args.dtype}, {_where(args.device)}; "
        f"floor (2x log_softmax) = {floor_ms:.0f} ms (median over the rows); one logits tensor = {logits_mb:.0f} MB"
    )
    cols = ("loss", "kdlm ms", "floor ms", "x floor", "", "ref ms", "speedup", "", "kdlm MB", "tensors", "", "ref MB")
    for col in cols:
        table.add_column(col, justify="left" if col == "loss" else "right")
    for r in rows:
        table.add_row(
            r["loss"], f"{r['kdlm_ms']:.0f}", f"{r['floor_ms']:.0f}", f"{r['x_floor']:.2f}", mark(r["ok_time"]),
            f"{r['reference_ms']:.0f}", f"{r['speedup']:.1f}x", mark(r["ok_speedup"]),
            f"{r['kdlm_mem_mb']:.0f}", f"{r['kdlm_mem_tensors']:.2f}", mark(r["ok_memory"]),
            f"{r['reference_mem_mb']:.0f}",
        )
    console = Console(width=140)
    console.print(table)
    console.print(f"wrote {args.out}")


# --------------------------------------------------------------------------------------------------
# kdlm bench generate
# --------------------------------------------------------------------------------------------------


def _add_generate_arguments(sub) -> None:
    p = sub.add_parser("generate", help="tokens/s of batched generation vs a one-prompt-at-a-time loop")
    p.add_argument("--model", type=Path, default=None, help="model directory (default: build a lab teacher)")
    p.add_argument("--prompts", type=int, default=64, help="lab prompts generated for (default 64)")
    p.add_argument("--batch-size", type=int, default=16, help="kdlm's batch size (default 16)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="new tokens per prompt (default 32)")
    p.add_argument("--template", default="paper", help="prompt template (default paper)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    p.set_defaults(bench_func=_bench_generate)


def _lab_teacher(root: Path, n_records: int) -> tuple[Path, list[dict]]:
    """A lab teacher of the default study's size (random weights) and lab records to prompt it with."""
    from kdlm.lab.corpus import CorpusConfig, build_corpus, training_texts, write_corpus
    from kdlm.lab.models import LabModelConfig, build_model
    from kdlm.lab.tokenizer import train_tokenizer

    paths = write_corpus(build_corpus(CorpusConfig(n_train=max(n_records, 200), n_validation=1, n_test=1)), root / "corpus")
    train = next(p for p in paths if p.stem == "train")
    train_tokenizer(training_texts([train]), 1024, root / "tokenizer")
    cfg = LabModelConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, seed=0)
    build_model(cfg, root / "tokenizer", root / "teacher")
    return root / "teacher", json.loads(train.read_text(encoding="utf-8"))


def _loop_generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> int:
    """The straightforward way: one ``model.generate`` call per prompt; returns the new tokens made."""
    import torch

    eos, made = tokenizer.eos_token_id, 0
    for prompt in prompts:
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])  # (1, T)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=eos)  # fmt: skip
        new = out[0, ids.shape[1] :].tolist()  # (T + T_new,) -> (T_new,)
        made += new.index(eos) if eos in new else len(new)
    return made


def _bench_generate(args: argparse.Namespace) -> int:
    import tempfile
    import time

    from kdlm.data.templates import format_prompt
    from kdlm.generation import GenerateConfig, generate_responses
    from kdlm.models import load_model, load_tokenizer, set_threads

    if args.prompts < 1 or args.batch_size < 1 or args.max_new_tokens < 1:
        raise ValueError(f"--prompts, --batch-size and --max-new-tokens must be >= 1, got "
                         f"{args.prompts}, {args.batch_size}, {args.max_new_tokens}")  # fmt: skip
    set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="kdlm-bench-") as tmp:
        if args.model is None:
            model_path, records = _lab_teacher(Path(tmp), args.prompts)
        else:
            from kdlm.lab.corpus import CorpusConfig, build_corpus

            model_path, records = args.model, build_corpus(CorpusConfig(n_train=max(args.prompts, 200)))["train"]
        model, tokenizer = load_model(model_path), load_tokenizer(model_path)
    model.eval()
    prompts = [format_prompt(r["instruction"], r["input"], args.template) for r in records[: args.prompts]]
    if len(prompts) < args.prompts:
        raise ValueError(f"only {len(prompts)} prompts available, asked for --prompts {args.prompts}")
    cfg = GenerateConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    generate_responses(model, tokenizer, prompts[:2], GenerateConfig(max_new_tokens=2, batch_size=2), desc="warm-up")
    _loop_generate(model, tokenizer, prompts[:1], 2)

    t0 = time.perf_counter()
    results = generate_responses(model, tokenizer, prompts, cfg, desc="bench batched")
    batched_s = time.perf_counter() - t0
    batched_tokens = sum(r["n_response_tokens"] for r in results)
    t0 = time.perf_counter()
    loop_tokens = _loop_generate(model, tokenizer, prompts, args.max_new_tokens)
    loop_s = time.perf_counter() - t0

    batched_tps, loop_tps = batched_tokens / batched_s, loop_tokens / loop_s
    figures = {
        "model": str(args.model) if args.model else "lab teacher (llama, 4 x 256, built for the benchmark)",
        "prompts": len(prompts),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "threads": _threads(),
        "batched_tokens": batched_tokens,
        "batched_s": batched_s,
        "batched_tokens_per_s": batched_tps,
        "loop_tokens": loop_tokens,
        "loop_s": loop_s,
        "loop_tokens_per_s": loop_tps,
        "speedup": batched_tps / loop_tps,
        "ok_speedup": bool(batched_tps / loop_tps >= 3),
    }
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"kdlm bench generate: {figures['model']}, {len(prompts)} prompts, "
                        f"{args.max_new_tokens} new tokens, greedy, CPU, {_threads()} threads")  # fmt: skip
    for col in ("side", "new tokens", "seconds", "tokens/s"):
        table.add_column(col, justify="left" if col == "side" else "right")
    table.add_row(f"kdlm batched (batch {args.batch_size})", str(batched_tokens), f"{batched_s:.2f}", f"{batched_tps:.0f}")
    table.add_row("one prompt at a time", str(loop_tokens), f"{loop_s:.2f}", f"{loop_tps:.0f}")
    console = Console(width=140)
    console.print(table)
    mark = "[green]ok[/]" if figures["ok_speedup"] else "[red]FAIL[/]"
    console.print(f"speedup {figures['speedup']:.1f}x (>= 3x: {mark})")
    return 0


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "--worker":
    _worker()
