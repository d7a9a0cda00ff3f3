"""``kdlm bench train``: distillation tokens/s of kdlm's trainer against TRL's ``GKDTrainer``, same run.

What is compared. Each side trains a fresh copy of the same student against the same frozen teacher on
the same batches for ``--warmup-steps`` + ``--steps`` optimizer steps, and only the last ``--steps``
are timed:

* **kdlm** (one row per ``--losses`` entry, default ``forward`` and ``atkd``): the
  :class:`kdlm.training.trainer.DistillTrainer` that ``kdlm distill`` runs, on the
  :class:`kdlm.training.data.ExampleDataset` / ``collate_indexed`` batches it trains on, with the
  ``TrainingArguments`` :func:`kdlm.training.trainer.train` builds, except that saving, logging and the
  progress bar are off (``save_strategy="no"``, ``logging_strategy="no"``, ``disable_tqdm``).
* **TRL**: ``trl.experimental.gkd.GKDTrainer`` (in TRL 1.16 it lives under ``trl.experimental``) with
  ``GKDConfig(beta=0, lmbda=0, seq_kd=False)``: no on-policy generation, the ground-truth responses are
  trained on, and the loss is TRL's ``generalized_jsd_loss`` at ``beta=0``, which (checked in TRL
  1.16's source) is ``F.kl_div(student_log_probs, teacher_log_probs, log_target=True)`` summed over the
  vocabulary, i.e. the forward KL(p_teacher || p_student) per counted token, divided by the number of
  counted tokens: the same quantity as kdlm's ``forward`` loss (the JSON's ``first_loss`` of both rows
  agree). TRL's defaults that differ from ``TrainingArguments`` are set back to kdlm's:
  ``gradient_checkpointing=False`` (TRL defaults to ``True``) and ``bf16=False`` (TRL defaults to
  ``True``, which on a CPU means bfloat16 autocast); generation ``temperature=1.0`` is unused at
  ``lmbda=0``. The dataset is the same tokenized examples as a ``datasets.Dataset`` (what TRL's trainers
  take), ``skip_prepare_dataset`` on, and the collator is kdlm's ``collate``, so the padded batches are
  identical; every other ``TrainingArguments`` field is given the same value on both sides.

Models: without ``--teacher``/``--student`` a lab pair of the default study's sizes is built in a
temporary directory (random weights; throughput does not depend on them): teacher LLaMA 4 layers x 256
(intermediate 1024), student LLaMA 2 layers x 96 (intermediate 256), over a 1024-token lab BPE
tokenizer trained on the 3000-record lab corpus. Data: lab train records (instruction + input through
the ``--template`` prompt template, ground-truth ``output`` as the response, EOS appended), encoded
by kdlm's ``encode_example`` to ``--max-length``. Defaults (batch 32, max length 128, lr 2e-3, cosine
schedule, 3 % warm-up, AdamW, float32) are the study's ``training`` section (``config/config.yaml``).

Tokens and time. Tokens counted are the *counted* tokens: response tokens (labels != -100 after the
causal shift), the tokens each loss averages over and the ``tokens_per_s`` that ``kdlm distill`` logs;
the non-pad tokens (prompt + response) are reported too (``tokens``). Both are counted from each
micro-batch as it enters ``training_step``, by the same wrapper on both trainers. The clock runs from
the end of optimizer step ``--warmup-steps`` to the end of the last step (``on_step_end`` callbacks,
with a CUDA synchronize on GPU), so it includes data loading, both forwards, the loss, the backward,
gradient clipping and the optimizer step. Each side is measured ``--repeats`` times, the sides
interleaved round by round (kdlm forward, TRL, kdlm atkd, ...), in the same process with the same
torch threads; each side's fastest run is kept (other load on the machine only ever slows a run down;
every run's tokens/s is in ``tokens_per_s_runs``).

Acceptance (issue 5): kdlm forward >= 1.0x TRL's tokens/s; kdlm ATKD >= 0.8x kdlm forward's.
TRL is an optional extra (``pip install -e .[bench]``); without it, or with ``--no-trl``, only kdlm's
rows are measured.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

DEFAULT_TRAIN_OUT = Path("results/bench/train.parquet")
TRL_HINT = "trl is not installed; install the bench extra: pip install -e .[bench] (or pass --no-trl)"
TRL_SIDE = "trl_gkd"

# the study's models (config/config.yaml lab.models) and tokenizer size
TEACHER = {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 1024, "seed": 0}
STUDENT = {"hidden_size": 96, "num_layers": 2, "num_heads": 4, "intermediate_size": 256, "seed": 1}
VOCAB = 1024
N_CORPUS = 3000


def add_train_arguments(sub) -> None:
    """Add ``bench train`` to the ``bench`` subparsers ``sub``."""
    p = sub.add_parser("train", help="distillation tokens/s of kdlm's trainer vs TRL's GKDTrainer")
    p.add_argument("--teacher", type=Path, default=None, help="teacher directory (default: build a lab pair)")
    p.add_argument("--student", type=Path, default=None, help="student directory (default: build a lab pair)")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per side (default 20)")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps before them (default 3)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per step (default 32, the study's)")
    p.add_argument("--max-length", type=int, default=128, help="max tokens per example (default 128, the study's)")
    p.add_argument("--repeats", type=int, default=3, help="measurements per side, interleaved; the fastest is kept (default 3)")
    p.add_argument("--losses", nargs="+", default=["forward", "atkd"], metavar="NAME",
                   help="kdlm losses to measure (default: forward atkd; forward is always measured)")  # fmt: skip
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate (default 2e-3, the study's)")
    p.add_argument("--template", default="paper", help="prompt template (default paper)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-trl", action="store_true", help="measure kdlm only (TRL is the optional bench extra)")
    p.add_argument("--out", type=Path, default=DEFAULT_TRAIN_OUT, help=f"parquet file to write (default {DEFAULT_TRAIN_OUT})")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    p.set_defaults(bench_func=bench_train)


# --------------------------------------------------------------------------------------------------
# setup: models and data
# --------------------------------------------------------------------------------------------------


def _lab_pair(root: Path) -> tuple[Path, Path]:
    """A lab teacher and student of the default study's sizes (random weights) in ``root``."""
    from kdlm.lab.corpus import CorpusConfig, build_corpus, training_texts, write_corpus
    from kdlm.lab.models import LabModelConfig, build_model
    from kdlm.lab.tokenizer import train_tokenizer

    paths = write_corpus(build_corpus(CorpusConfig(n_train=N_CORPUS, n_validation=1, n_test=1)), root / "corpus")
    train = next(p for p in paths if p.stem == "train")
    train_tokenizer(training_texts([train]), VOCAB, root / "tokenizer")
    build_model(LabModelConfig(family="llama", **TEACHER), root / "tokenizer", root / "teacher")
    build_model(LabModelConfig(family="llama", **STUDENT), root / "tokenizer", root / "student")
    return root / "teacher", root / "student"


def _pairs(n: int, template: str) -> tuple[list[str], list[str]]:
    """``n`` lab train prompts (through ``template``) and their ground-truth responses."""
    from kdlm.data.templates import format_prompt
    from kdlm.lab.corpus import CorpusConfig, build_corpus

    records = build_corpus(CorpusConfig(n_train=max(n, N_CORPUS), n_validation=1, n_test=1))["train"][:n]
    return [format_prompt(r["instruction"], r["input"], template) for r in records], [r["output"] for r in records]


# --------------------------------------------------------------------------------------------------
# measurement: one trainer, metered the same way on both sides
# --------------------------------------------------------------------------------------------------


def _metered(trainer_cls, warmup: int, last: int):
    """``trainer_cls`` with a meter: counted/non-pad tokens of the timed steps and the clock around them.

    Returns the subclass and its callback; the callback holds the figures after ``train()``.
    """
    import time

    import torch
    from transformers import TrainerCallback

    from kdlm.data.tokenize import IGNORE_INDEX

    class Meter(TrainerCallback):
        def __init__(self) -> None:
            self.counted = self.tokens = 0
            self.t0 = self.t1 = math.nan
            self.first_loss = math.nan

        def count(self, step: int, inputs: dict) -> None:
            if warmup <= step < last:  # `step` optimizer steps are done: this batch is step `step + 1`
                self.counted += int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
                self.tokens += int(inputs["attention_mask"].sum())

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (warmup, last):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                if state.global_step == warmup:
                    self.t0 = time.perf_counter()
                else:
                    self.t1 = time.perf_counter()
            return control

    meter = Meter()

    class Metered(trainer_cls):
        def training_step(self, model, inputs, num_items_in_batch=None):
            step = self.state.global_step
            meter.count(step, inputs)
            loss = super().training_step(model, inputs, num_items_in_batch)
            if step == 0:
                meter.first_loss = float(loss)
            return loss

    Metered.__name__ = Metered.__qualname__ = f"Metered{trainer_cls.__name__}"
    return Metered, meter


def _common_args(out_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """TrainingArguments fields given the same value on both sides (kdlm's `train()` values, quiet)."""
    import os

    import torch

    from kdlm.training.config import TrainConfig

    cfg = TrainConfig(max_steps=args.warmup_steps + args.steps, lr=args.lr, scheduler="cosine", warmup_ratio=0.03,
                      batch_size=args.batch_size, grad_accum=1, max_length=args.max_length, seed=0)  # fmt: skip
    cpu = not torch.cuda.is_available()
    return {
        "output_dir": str(out_dir),
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "learning_rate": cfg.lr,
        "lr_scheduler_type": cfg.scheduler,
        "warmup_steps": cfg.warmup_ratio,
        "weight_decay": cfg.weight_decay,
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "max_grad_norm": cfg.max_grad_norm,
        "bf16": cfg.bf16,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "gradient_checkpointing": False,
        "logging_strategy": "no",
        "logging_steps": cfg.logging_steps,  # unused with logging off; TRL defaults to 10, TrainingArguments to 500
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "use_cpu": cpu,
        "ddp_backend": "gloo" if cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        "disable_tqdm": True,
    }


def _run_kdlm(loss: str, paths: dict[str, Path], data: tuple[list[str], list[str]], args: argparse.Namespace,
              tmp: Path) -> dict:
    from functools import partial

    from transformers import TrainingArguments

    from kdlm.models import check_vocab_compatible, load_model, load_tokenizer
    from kdlm.training.config import MethodConfig
    from kdlm.training.data import ExampleDataset, collate_indexed
    from kdlm.training.trainer import DistillTrainer

    tokenizer = load_tokenizer(paths["student"])
    student, teacher = load_model(paths["student"]), load_model(paths["teacher"])
    vocab_size = check_vocab_compatible(student, teacher, tokenizer, load_tokenizer(paths["teacher"]))
    dataset = ExampleDataset(*data, tokenizer, args.max_length)
    cls, meter = _metered(DistillTrainer, args.warmup_steps, args.warmup_steps + args.steps)
    trainer = _quiet(cls(
        model=student,
        args=TrainingArguments(**_common_args(tmp / f"kdlm-{loss}", args)),
        train_dataset=dataset,
        data_collator=partial(collate_indexed, pad_token_id=tokenizer.pad_token_id),
        teacher=teacher,
        method=MethodConfig(loss=loss),
        vocab_size=vocab_size,
        callbacks=[meter],
    ))
    trainer.train()
    return _figures(meter)


def _run_trl(paths: dict[str, Path], data: tuple[list[str], list[str]], args: argparse.Namespace, tmp: Path) -> dict:
    from functools import partial

    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from kdlm.data.tokenize import collate, encode_example
    from kdlm.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(paths["student"])
    examples = [encode_example(tokenizer, p, r, args.max_length) for p, r in zip(*data, strict=True)]
    student, teacher = load_model(paths["student"]), load_model(paths["teacher"])
    config = GKDConfig(
        **_common_args(tmp / "trl", args),
        beta=0.0,  # generalized_jsd_loss at beta=0: KL(teacher || student), the forward KL
        lmbda=0.0,  # never generate on-policy: train on the dataset's (ground-truth) responses
        seq_kd=False,  # nor on teacher generations
        temperature=1.0,  # sampling temperature only (unused at lmbda=0); the loss runs at temperature 1
        max_length=args.max_length,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    cls, meter = _metered(GKDTrainer, args.warmup_steps, args.warmup_steps + args.steps)
    trainer = _quiet(cls(
        model=student,
        teacher_model=teacher,
        args=config,
        train_dataset=Dataset.from_list(examples),
        data_collator=partial(collate, pad_token_id=tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[meter],
    ))
    trainer.train()
    return _figures(meter)


def _quiet(trainer):
    """``trainer`` without the callback that prints the end-of-training metrics (both sides alike)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def _figures(meter) -> dict[str, float]:
    seconds = meter.t1 - meter.t0
    return {
        "seconds": seconds,
        "counted_tokens": meter.counted,
        "tokens": meter.tokens,
        "tokens_per_s": meter.counted / seconds,
        "all_tokens_per_s": meter.tokens / seconds,
        "first_loss": meter.first_loss,
    }


def _trl_version() -> str | None:
    """TRL's version if its GKDTrainer imports, else None (after saying why on stderr)."""
    import warnings

    try:
        import trl
    except ImportError:
        print(f"kdlm bench train: {TRL_HINT}; measuring kdlm only", file=sys.stderr)
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TRLExperimentalWarning: the module is named experimental already
            from trl.experimental.gkd import GKDTrainer  # noqa: F401
    except ImportError as e:
        print(f"kdlm bench train: trl {trl.__version__} has no trl.experimental.gkd.GKDTrainer ({e}); "
              f"{TRL_HINT}; measuring kdlm only", file=sys.stderr)  # fmt: skip
        return None
    return trl.__version__


# --------------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------------


def bench_train(args: argparse.Namespace) -> int:
    """Run ``kdlm bench train``; returns the exit status."""
    import tempfile
    import warnings

    import torch
    import transformers

    from kdlm.bench import _threads
    from kdlm.io import atomic_path
    from kdlm.losses import LOSSES
    from kdlm.models import set_threads

    if args.steps < 1 or args.warmup_steps < 1 or args.batch_size < 1 or args.max_length < 2 or args.repeats < 1:
        raise ValueError(f"--steps, --warmup-steps, --batch-size and --repeats must be >= 1 and --max-length >= 2, got "
                         f"{args.steps}, {args.warmup_steps}, {args.batch_size}, {args.repeats}, {args.max_length}")  # fmt: skip
    losses = ["forward", *[name for name in dict.fromkeys(args.losses) if name != "forward"]]
    unknown = sorted(set(losses) - set(LOSSES) | ({"sft"} & set(losses)))
    if unknown:
        raise ValueError(f"unknown or non-distillation losses {unknown}; known: {', '.join(n for n in LOSSES if n != 'sft')}")
    if (args.teacher is None) != (args.student is None):
        raise ValueError("give both --teacher and --student, or neither (a lab pair is built)")
    trl_version = None
    if not args.no_trl:
        trl_version = _trl_version()
    set_threads(args.threads)
    # each round: kdlm forward, TRL, then the other kdlm losses (forward and TRL side by side in time)
    sides = ["kdlm_forward", *([TRL_SIDE] if trl_version else []), *(f"kdlm_{name}" for name in losses[1:])]
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        with tempfile.TemporaryDirectory(prefix="kdlm-bench-train-") as tmp_name, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tmp = Path(tmp_name)
            if args.teacher is None:
                teacher, student = _lab_pair(tmp / "lab")
                model_desc = ("lab pair built for the benchmark: teacher llama 4 x 256, student llama 2 x 96, "
                              f"vocab {VOCAB}, random weights")  # fmt: skip
            else:
                teacher, student = args.teacher, args.student
                model_desc = f"teacher {teacher}, student {student}"
            paths = {"teacher": teacher, "student": student}
            data = _pairs((args.warmup_steps + args.steps) * args.batch_size, args.template)
            for _ in range(args.repeats):
                for side in sides:
                    if side == TRL_SIDE:
                        runs[side].append(_run_trl(paths, data, args, tmp))
                    else:
                        runs[side].append(_run_kdlm(side.removeprefix("kdlm_"), paths, data, args, tmp))
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()

    kept = {side: _best_run(rs) for side, rs in runs.items()}
    forward_tps = kept["kdlm_forward"]["tokens_per_s"]
    trl_tps = kept[TRL_SIDE]["tokens_per_s"] if TRL_SIDE in kept else math.nan
    rows = []
    settings = {
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "repeats": args.repeats,
        "threads": _threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    for side in [*(f"kdlm_{name}" for name in losses), *([TRL_SIDE] if TRL_SIDE in kept else [])]:
        fig = kept[side]
        rows.append({
            "side": side,
            "trainer": "trl.experimental.gkd.GKDTrainer" if side == TRL_SIDE else "kdlm DistillTrainer",
            "loss": "gkd beta=0 (forward KL)" if side == TRL_SIDE else side.removeprefix("kdlm_"),
            **fig,
            "tokens_per_s_runs": [r["tokens_per_s"] for r in runs[side]],
            "vs_trl": fig["tokens_per_s"] / trl_tps,
            "vs_forward": fig["tokens_per_s"] / forward_tps,
            **settings,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl_version,
        })  # fmt: skip
    atkd = kept.get("kdlm_atkd")
    figures = {
        "models": model_desc,
        "trl": trl_version,
        **settings,
        "kdlm_forward_tokens_per_s": forward_tps,
        "trl_tokens_per_s": trl_tps if trl_version else None,
        "atkd_tokens_per_s": atkd["tokens_per_s"] if atkd else None,
        "kdlm_vs_trl": forward_tps / trl_tps if trl_version else None,
        "atkd_vs_forward": atkd["tokens_per_s"] / forward_tps if atkd else None,
        "ok_kdlm_vs_trl": bool(forward_tps >= trl_tps) if trl_version else None,
        "ok_atkd_vs_forward": bool(atkd["tokens_per_s"] >= 0.8 * forward_tps) if atkd else None,
        "same_batches": len({r["counted_tokens"] for r in rows}) == 1 and len({r["tokens"] for r in rows}) == 1,
        "rows": rows,
    }
    import pandas as pd

    with atomic_path(args.out) as tmp_out:
        pd.DataFrame(rows).to_parquet(tmp_out, index=False)
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        _print_table(figures, args)
    return 0


def _best_run(runs: list[dict]) -> dict:
    """The fastest run: other load on the machine only ever slows a run down, so the best is the least noisy."""
    return max(runs, key=lambda r: r["tokens_per_s"])


def _print_table(figures: dict, args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    def mark(ok: bool | None) -> str:
        return "" if ok is None else ("[green]ok[/]" if ok else "[red]FAIL[/]")

    table = Table(title=f"kdlm bench train: {figures['models']}; batch {args.batch_size}, max length {args.max_length}, "
                        f"{args.steps} timed steps after {args.warmup_steps}, best of {args.repeats}, "
                        f"{figures['device']}, {figures['threads']} threads, TRL {figures['trl'] or 'not measured'}")  # fmt: skip
    for col in ("side", "loss", "counted tokens", "seconds", "tokens/s", "all tokens/s", "first loss", "vs TRL", "vs forward"):
        table.add_column(col, justify="left" if col in ("side", "loss") else "right")
    for r in figures["rows"]:
        table.add_row(r["side"], r["loss"], str(r["counted_tokens"]), f"{r['seconds']:.2f}", f"{r['tokens_per_s']:.0f}",
                      f"{r['all_tokens_per_s']:.0f}", f"{r['first_loss']:.4f}",
                      "" if math.isnan(r["vs_trl"]) else f"{r['vs_trl']:.2f}x", f"{r['vs_forward']:.2f}x")  # fmt: skip
    console = Console(width=160)
    console.print(table)
    if figures["kdlm_vs_trl"] is not None:
        console.print(f"kdlm forward / TRL GKD = {figures['kdlm_vs_trl']:.2f}x (>= 1.0x: {mark(figures['ok_kdlm_vs_trl'])})")
    else:
        console.print(f"TRL not measured ({'--no-trl' if args.no_trl else TRL_HINT})")
    if figures["atkd_vs_forward"] is not None:
        console.print(f"kdlm atkd / kdlm forward = {figures['atkd_vs_forward']:.2f}x "
                      f"(>= 0.8x: {mark(figures['ok_atkd_vs_forward'])})")  # fmt: skip
    if not figures["same_batches"]:
        console.print("[red]the sides did not train on the same tokens[/]")
    console.print(f"wrote {args.out}")
