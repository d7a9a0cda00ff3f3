"""``kdlm bench train``: distillation tokens/s of kdlm's trainer against TRL's ``GKDTrainer``, same run.

What is compared. Each side trains a fresh copy of the same student against the same frozen teacher on
the same batches for ``--warmup-steps`` + ``--steps`` optimizer steps, and only the last ``--steps``
are timed:

* **kdlm** (one row per ``--losses`` entry, default ``forward`` and ``atkd``): the
  :class:`kdlm.training.trainer.DistillTrainer` that ``kdlm distill`` runs, on the
  :class:`kdlm.training.data.ExampleDataset` / ``collate_indexed`` batches it trains on, with the
  ``TrainingArguments`` that :func:`kdlm.training.trainer.training_arguments` builds for ``kdlm distill``
  (:func:`kdlm_arguments`), except for the fields in :data:`BENCH_OVERRIDES`: saving, logging and the
  progress bar are off.
* **TRL**: ``trl.experimental.gkd.GKDTrainer`` (in TRL 1.16 it lives under ``trl.experimental``) with
  ``GKDConfig(beta=0, lmbda=0, seq_kd=False)``: no on-policy generation, the ground-truth responses are
  trained on, and the loss is TRL's ``generalized_jsd_loss`` at ``beta=0``, which (checked in TRL
  1.16's source) is ``F.kl_div(student_log_probs, teacher_log_probs, log_target=True)`` summed over the
  vocabulary, i.e. the forward KL(p_teacher || p_student) per counted token, divided by the number of
  counted tokens: the same quantity as kdlm's ``forward`` loss (the JSON's ``first_loss`` of both rows
  agree). Every ``TrainingArguments`` field of the ``GKDConfig`` is given kdlm's value
  (:func:`trl_config`), which sets TRL's defaults that differ back to kdlm's (among them
  ``gradient_checkpointing=False`` and ``bf16=False``, which TRL defaults to ``True``: on a CPU that
  means bfloat16 autocast); generation ``temperature=1.0`` is unused at ``lmbda=0``. The dataset is the
  same tokenized examples as a ``datasets.Dataset`` (what TRL's trainers take), ``skip_prepare_dataset``
  on, and the collator is kdlm's ``collate``, so the padded batches are identical.

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

Figures: per side, counted tokens, seconds, ``tokens_per_s`` (counted tokens per second) and
``all_tokens_per_s`` (non-pad tokens per second), ``first_loss`` (the loss of the first batch);
``kdlm_vs_trl`` is kdlm forward's tokens/s over TRL's (its check, ``ok_kdlm_vs_trl``: ``>= 1.0``:
kdlm trains at least as fast as TRL on the same work), ``atkd_vs_forward`` is kdlm ATKD's over kdlm
forward's (its check, ``ok_atkd_vs_forward``: ``>= 0.8``: ATKD's extra work costs at most a fifth of
the throughput), and ``same_batches`` says every side counted the same tokens.

Teacher signals (``--signals``, default ``live exact compact``): every loss is measured with the live
teacher (side ``kdlm_<loss>``), and with the cached teacher signal that ``kdlm teacher-signal`` builds
(``kdlm_<loss>_exact``, ``kdlm_<loss>_compact`` at ``--top-k``): the caches are built once, before the
rounds, from the same examples (written as a training file), and their build time is reported apart
(``cache_build_seconds``), with the number of distillation jobs that share one cache in
``config/paper.yaml`` and the build time divided by it (``cache_build_seconds_amortized``). Cached sides
load no teacher. ``exact_vs_live`` is a loss's exact tokens/s over its live one (check ``>= 1.8``) and
``exact_vs_trl`` forward exact's over TRL's (check ``>= 1.5``). Last, the compact signal's error: on
``--error-batches`` batches, every loss from the compact signal at each ``--error-k`` against the same loss
from the exact signal (relative error of the loss value, the mean over batches), with the bytes per
token each stores; with a trained pair (``--teacher``/``--student``) these are the figures that matter,
a random-weight teacher's flat distributions being the worst case for top-k.

TRL is an optional extra (``pip install -e .[bench]``); without it, or with ``--no-trl``, only kdlm's
rows are measured.

At paper scale (``scripts/rehearse_gpu.sh``): ``--bf16`` trains in bf16 with both sides' teachers in
the training precision (``teacher_dtype``), ``--lengthen K`` repeats each lab input K times and each
answer K/4 times so sequences fill ``--max-length``, each row has the GPU's peak allocated and reserved
memory, and ``planned_gb`` / ``measured_vs_planned`` set the reserved peak of kdlm forward against the
memory plan's estimate for the pair (one GPU, DDP; ``kdlm.memory_plan``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import torch
import transformers
from datasets import Dataset
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from kdlm.bench.common import console, mark, table, threads, write_rows
from kdlm.data.templates import format_prompt
from kdlm.data.tokenize import IGNORE_INDEX, collate, encode_example
from kdlm.lab.build import build_lab
from kdlm.lab.corpus import CorpusConfig, build_corpus
from kdlm.lab.models import LabModelConfig
from kdlm.losses import LOSSES
from kdlm.losses.compact import TopK, compact_loss
from kdlm.losses.signal import HiddenStates
from kdlm.models import check_vocab_compatible, load_model, load_tokenizer, set_threads
from kdlm.schemas import MIXED, write_table
from kdlm.teacher_cache.build import build_teacher_signal
from kdlm.teacher_cache.config import TeacherSignalConfig
from kdlm.teacher_cache.store import TeacherSignalCache
from kdlm.training.config import MethodConfig, TrainConfig
from kdlm.training.data import ExampleDataset, collate_indexed
from kdlm.training.output_rows import CountedRows, counted_outputs, output_layer
from kdlm.training.trainer import DistillTrainer, teacher_dtype, training_arguments

TRL_HINT = "trl is not installed; install the bench extra: pip install -e .[bench] (or pass --no-trl)"
TRL_SIDE = "trl_gkd"

# the study's models (config/config.yaml lab.models) and tokenizer size
TEACHER = LabModelConfig(family="llama", hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, seed=0)
STUDENT = LabModelConfig(family="llama", hidden_size=96, num_layers=2, num_heads=4, intermediate_size=256, seed=1)
VOCAB = 1024
N_CORPUS = 3000

# The only TrainingArguments fields whose values differ from what `kdlm distill` trains with: the
# benchmark times training steps, so it writes no checkpoints, logs nothing (`logging_first_step` too:
# it would log at the end of step 1, inside the timed window when --warmup-steps is 1) and shows no
# progress bar.
BENCH_OVERRIDES = {"save_strategy": "no", "logging_strategy": "no", "logging_first_step": False, "disable_tqdm": True}


# --------------------------------------------------------------------------------------------------
# setup: models, data and the training arguments
# --------------------------------------------------------------------------------------------------


def _lab_pair(root: Path) -> tuple[Path, Path]:
    """A lab teacher and student of the default study's sizes (random weights) in ``root``."""
    lab = build_lab(root, CorpusConfig(n_train=N_CORPUS, n_validation=1, n_test=1),
                    {"teacher": TEACHER, "student": STUDENT}, VOCAB)  # fmt: skip
    return lab["teacher"], lab["student"]


def _pairs(n: int, template: str, lengthen: int = 1) -> tuple[list[str], list[str]]:
    """``n`` lab train prompts (through ``template``) and their ground-truth responses; with ``lengthen`` > 1
    each prompt's input is repeated that many times and each response a quarter as many (long sequences at
    real shapes, prompts cut from the left, about half the tokens counted)."""
    records = build_corpus(CorpusConfig(n_train=max(n, N_CORPUS), n_validation=1, n_test=1))["train"][:n]
    prompts = [format_prompt(r["instruction"], " ".join([r["input"] or r["instruction"]] * lengthen), template)
               if lengthen > 1 else format_prompt(r["instruction"], r["input"], template) for r in records]  # fmt: skip
    return prompts, [" ".join([r["output"]] * max(1, lengthen // 4)) for r in records]


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The training settings both sides run with: the study's, at the benchmark's steps and shapes."""
    return TrainConfig(max_steps=args.warmup_steps + args.steps, lr=args.lr, scheduler="cosine", warmup_ratio=0.03,
                       batch_size=args.batch_size, grad_accum=1, max_length=args.max_length, seed=0,
                       bf16=getattr(args, "bf16", False))  # fmt: skip


def kdlm_arguments(cfg: TrainConfig, output_dir: str | Path) -> TrainingArguments:
    """``kdlm distill``'s arguments for ``cfg`` (:func:`training_arguments`) with :data:`BENCH_OVERRIDES`."""
    return dataclasses.replace(training_arguments(cfg, output_dir), **BENCH_OVERRIDES)


def trl_config(kdlm_args: TrainingArguments, max_length: int):
    """TRL's ``GKDConfig`` for the forward KL on ground truth, every ``TrainingArguments`` field as in ``kdlm_args``."""
    from trl.experimental.gkd import GKDConfig

    shared = {f.name: getattr(kdlm_args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
    return GKDConfig(
        **shared,
        beta=0.0,  # generalized_jsd_loss at beta=0: KL(teacher || student), the forward KL
        lmbda=0.0,  # never generate on-policy: train on the dataset's (ground-truth) responses
        seq_kd=False,  # nor on teacher generations
        temperature=1.0,  # sampling temperature only (unused at lmbda=0); the loss runs at temperature 1
        max_length=max_length,
        dataset_kwargs={"skip_prepare_dataset": True},
    )


# --------------------------------------------------------------------------------------------------
# measurement: one trainer, metered the same way on both sides
# --------------------------------------------------------------------------------------------------


class Meter(TrainerCallback):
    """Counted/non-pad tokens of the steps after ``warmup`` up to ``last`` and the clock around them."""

    def __init__(self, warmup: int, last: int) -> None:
        self.warmup, self.last = warmup, last
        self.counted = self.tokens = 0
        self.t0 = self.t1 = math.nan
        self.first_loss = math.nan

    def count(self, step: int, inputs: dict) -> None:
        if self.warmup <= step < self.last:  # `step` optimizer steps are done: this batch is step `step + 1`
            self.counted += int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
            self.tokens += int(inputs["attention_mask"].sum())

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in (self.warmup, self.last):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if state.global_step == self.warmup:
                self.t0 = time.perf_counter()
            else:
                self.t1 = time.perf_counter()
        return control

    def figures(self) -> dict[str, float]:
        seconds = self.t1 - self.t0
        cuda = torch.cuda.is_available()
        return {
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else math.nan,
            "peak_reserved_gb": torch.cuda.max_memory_reserved() / 1e9 if cuda else math.nan,
            "seconds": seconds,
            "counted_tokens": self.counted,
            "tokens": self.tokens,
            "tokens_per_s": self.counted / seconds,
            "all_tokens_per_s": self.tokens / seconds,
            "first_loss": self.first_loss,
        }


def _metered(trainer_cls, meter: Meter):
    """``trainer_cls`` whose ``training_step`` reports each micro-batch and the first loss to ``meter``."""

    class Metered(trainer_cls):
        def training_step(self, model, inputs, num_items_in_batch=None):
            step = self.state.global_step
            meter.count(step, inputs)
            loss = super().training_step(model, inputs, num_items_in_batch)
            if step == 0:
                meter.first_loss = float(loss)
            return loss

    Metered.__name__ = Metered.__qualname__ = f"Metered{trainer_cls.__name__}"
    return Metered


def _quiet(trainer):
    """``trainer`` without the callback that prints the end-of-training metrics (both sides alike)."""
    trainer.remove_callback(PrinterCallback)
    return trainer


def _run_kdlm(loss: str, paths: dict[str, Path], data: tuple[list[str], list[str]], args: argparse.Namespace,
              tmp: Path, cache: Path | None = None) -> dict:  # fmt: skip
    """One kdlm side: the live teacher, or (``cache``) a cached teacher signal and no teacher model."""
    _fresh_memory()
    tokenizer = load_tokenizer(paths["student"])
    cfg = train_config(args)
    student = load_model(paths["student"])
    teacher, signal = None, None
    if cache is None:
        teacher = load_model(paths["teacher"], dtype=teacher_dtype(cfg))
        vocab_size = check_vocab_compatible(student, teacher, tokenizer, load_tokenizer(paths["teacher"]))
    else:
        signal, vocab_size = TeacherSignalCache(cache), len(tokenizer)
    dataset = ExampleDataset(*data, tokenizer, args.max_length)
    meter = Meter(args.warmup_steps, args.warmup_steps + args.steps)
    trainer = _quiet(_metered(DistillTrainer, meter)(
        model=student,
        args=kdlm_arguments(cfg, tmp / f"kdlm-{loss}"),
        train_dataset=dataset,
        data_collator=partial(collate_indexed, pad_token_id=tokenizer.pad_token_id),
        teacher=teacher,
        teacher_signal=signal,
        method=MethodConfig(loss=loss),
        vocab_size=vocab_size,
        callbacks=[meter],
    ))  # fmt: skip
    trainer.train()
    return meter.figures()


def _run_trl(paths: dict[str, Path], data: tuple[list[str], list[str]], args: argparse.Namespace, tmp: Path) -> dict:
    from trl.experimental.gkd import GKDTrainer

    _fresh_memory()
    tokenizer = load_tokenizer(paths["student"])
    examples = [encode_example(tokenizer, p, r, args.max_length) for p, r in zip(*data, strict=True)]
    cfg = train_config(args)
    # the same teacher precision as kdlm's side
    student, teacher = load_model(paths["student"]), load_model(paths["teacher"], dtype=teacher_dtype(cfg))
    config = trl_config(kdlm_arguments(cfg, tmp / "trl"), args.max_length)
    meter = Meter(args.warmup_steps, args.warmup_steps + args.steps)
    trainer = _quiet(_metered(GKDTrainer, meter)(
        model=student,
        teacher_model=teacher,
        args=config,
        train_dataset=Dataset.from_list(examples),
        data_collator=partial(collate, pad_token_id=tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[meter],
    ))  # fmt: skip
    trainer.train()
    return meter.figures()


def _training_file(data: tuple[list[str], list[str]], path: Path) -> Path:
    """The benchmark's examples as a training file of source gt (what ``kdlm teacher-signal`` reads)."""
    import pandas as pd

    prompts, responses = data
    frame = pd.DataFrame({"id": [f"bench-{i}" for i in range(len(prompts))], "prompt": prompts, "response": responses,
                          "origin": "gt", "online": False})  # fmt: skip
    write_table(frame, path, MIXED)
    return path


def _build_caches(paths: dict[str, Path], data_file: Path, args: argparse.Namespace, tmp: Path) -> dict[str, dict]:
    """mode -> {path, build_seconds, bytes_per_token} of the caches the cached sides read."""
    cfg = train_config(args)
    caches = {}
    for mode in [m for m in ("exact", "compact") if m in args.signals]:
        signal = TeacherSignalConfig(mode=mode, top_k=args.top_k, batch_size=args.batch_size)
        out = tmp / f"signal-{mode}"
        start = time.perf_counter()
        meta = build_teacher_signal(teacher=str(paths["teacher"]), data=data_file, out=out, template=args.template,
                                    max_length=args.max_length, cfg=signal, dtype=teacher_dtype(cfg))  # fmt: skip
        caches[mode] = {"path": out, "build_seconds": time.perf_counter() - start,
                        "bytes_per_token": meta["bytes_per_token"]}  # fmt: skip
    return caches


def jobs_per_cache(config_file: Path = Path("config/paper.yaml")) -> float | None:
    """The mean number of distillation jobs that read one cached teacher signal in ``config_file`` (None
    where the file is not at hand, e.g. outside a checkout)."""
    from collections import Counter

    from kdlm.config_checks import check_config_files
    from kdlm.study import SOURCES, Study

    try:
        config, _ = check_config_files([config_file], Path("."))
    except (OSError, ValueError):
        return None
    study = Study(config)
    counts = Counter((r.teacher, study.mix_teacher(r.teacher, r.source), r.source) for r in study.runs()
                     if SOURCES[r.source].reads_teacher_signal(study.loss(r.method)))  # fmt: skip
    return sum(counts.values()) / len(counts) if counts else None


def compact_errors(paths: dict[str, Path], data: tuple[list[str], list[str]], args: argparse.Namespace,
                   losses: list[str]) -> list[dict]:  # fmt: skip
    """Every loss from the compact signal at each k of ``--error-k`` against the exact signal, on the first
    ``--error-batches`` batches: the mean relative error of the loss value, with bytes per token."""
    tokenizer = load_tokenizer(paths["student"])
    cfg = train_config(args)
    student, teacher = load_model(paths["student"]).eval(), load_model(paths["teacher"], dtype=teacher_dtype(cfg)).eval()
    vocab = len(tokenizer)
    dataset = ExampleDataset(*data, tokenizer, args.max_length)
    layer = output_layer(teacher)
    exact_bytes = layer.weight.shape[1] * layer.weight.element_size()
    errors: dict[tuple[str, int], list[float]] = {}
    for b in range(args.error_batches):
        rows = range(b * args.batch_size, min((b + 1) * args.batch_size, len(dataset)))
        batch = collate_indexed([dataset[i] for i in rows], tokenizer.pad_token_id)
        counted = CountedRows.of(batch["labels"])
        keep: list[torch.Tensor] = []
        with torch.no_grad():
            with counted_outputs(student, counted.positions):
                logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., :vocab]
            with counted_outputs(teacher, counted.positions, keep=keep, logits=False):
                teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            exact = HiddenStates(keep[0], layer.weight, layer.bias, vocab)
            teacher_logits = exact.flat().rows(None, (0, counted.targets.numel()))
            for k in args.error_k:
                topk = TopK.from_logits(teacher_logits, counted.targets, k)
                for name in losses:
                    want = float(LOSSES[name](logits, exact, counted.labels))
                    got = float(compact_loss(LOSSES[name], logits, topk, counted.targets))
                    errors.setdefault((name, topk.k), []).append(abs(got - want) / max(abs(want), 1e-12))
    return [{"loss": name, "k": k, "relative_error": sum(v) / len(v), "bytes_per_token": 8 * k + 8,
             "exact_bytes_per_token": exact_bytes} for (name, k), v in errors.items()]  # fmt: skip


def _fresh_memory() -> None:
    """Free the previous side's models and restart the peak-memory count (GPU only)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def planned_gb(paths: dict[str, Path], args: argparse.Namespace) -> float | None:
    """The memory plan's estimate for this job on one GPU under DDP (what the benchmark runs), in GB."""
    from kdlm.memory_plan import TrainingJob, estimate

    job = TrainingJob(name="bench", student=str(paths["student"]), teacher=str(paths["teacher"]),
                      batch_size=args.batch_size, max_length=args.max_length, bf16=getattr(args, "bf16", False))  # fmt: skip
    try:
        return estimate(job, "ddp", 1, checkpointing=False, teacher_sharded=False).gb
    except ValueError:
        return None


def _trl_version() -> str | None:
    """TRL's version if its GKDTrainer imports, else None (after saying why on stderr)."""
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


def run(args: argparse.Namespace) -> int:
    """Run ``kdlm bench train``: measure, write ``args.out``, print the table (or JSON); returns 0."""
    if args.steps < 1 or args.warmup_steps < 1 or args.batch_size < 1 or args.max_length < 2 or args.repeats < 1:
        raise ValueError(f"--steps, --warmup-steps, --batch-size and --repeats must be >= 1 and --max-length >= 2, got "
                         f"{args.steps}, {args.warmup_steps}, {args.batch_size}, {args.repeats}, {args.max_length}")  # fmt: skip
    losses = ["forward", *[name for name in dict.fromkeys(args.losses) if name != "forward"]]
    args.signals = [s for s in dict.fromkeys(getattr(args, "signals", None) or ["live"])]
    args.signals = ["live", *[s for s in args.signals if s != "live"]]  # live is the reference of every row
    if set(args.signals) - {"live", "exact", "compact"}:
        raise ValueError(f"unknown teacher signals {sorted(set(args.signals) - {'live', 'exact', 'compact'})}; "
                         "known: live, exact, compact")  # fmt: skip
    args.top_k = getattr(args, "top_k", 64)
    args.error_k = getattr(args, "error_k", [16, 64, 256])
    args.error_batches = getattr(args, "error_batches", 2)
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
    cached = [s for s in args.signals if s != "live"]
    sides = ["kdlm_forward", *([TRL_SIDE] if trl_version else []), *(f"kdlm_forward_{s}" for s in cached),
             *(f"kdlm_{name}{suffix}" for name in losses[1:] for suffix in ["", *(f"_{s}" for s in cached)])]  # fmt: skip
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
            data = _pairs((args.warmup_steps + args.steps) * args.batch_size, args.template, getattr(args, "lengthen", 1))
            plan_gb = planned_gb(paths, args)
            caches = _build_caches(paths, _training_file(data, tmp / "train.parquet"), args, tmp) if cached else {}
            for _ in range(args.repeats):
                for side in sides:
                    if side == TRL_SIDE:
                        runs[side].append(_run_trl(paths, data, args, tmp))
                    else:
                        loss, signal = _side_parts(side)
                        cache = caches[signal]["path"] if signal != "live" else None
                        runs[side].append(_run_kdlm(loss, paths, data, args, tmp, cache))
            errors = compact_errors(paths, data, args, losses_for_errors()) if args.error_k else []
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
        "threads": threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "bf16": getattr(args, "bf16", False),
    }
    ordered = [f"kdlm_{name}{suffix}" for name in losses for suffix in ["", *(f"_{s}" for s in cached)]]
    for side in [*ordered, *([TRL_SIDE] if TRL_SIDE in kept else [])]:
        fig = kept[side]
        loss, signal = _side_parts(side) if side != TRL_SIDE else ("gkd beta=0 (forward KL)", "live")
        live_tps = kept[f"kdlm_{loss}"]["tokens_per_s"] if side != TRL_SIDE else fig["tokens_per_s"]
        rows.append({
            "side": side,
            "trainer": "trl.experimental.gkd.GKDTrainer" if side == TRL_SIDE else "kdlm DistillTrainer",
            "loss": loss,
            "signal": signal,
            "vs_live": fig["tokens_per_s"] / live_tps,
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
    per_cache = jobs_per_cache()
    exact_vs_live = {loss: kept[f"kdlm_{loss}_exact"]["tokens_per_s"] / kept[f"kdlm_{loss}"]["tokens_per_s"]
                     for loss in losses if f"kdlm_{loss}_exact" in kept}  # fmt: skip
    exact_forward = kept.get("kdlm_forward_exact")
    figures = {
        "models": model_desc,
        "planned_gb": plan_gb,
        # the allocator's reserved peak (what the job holds on its GPU) against the plan, which counts it
        "measured_vs_planned": kept["kdlm_forward"]["peak_reserved_gb"] / plan_gb if plan_gb else None,
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
        "exact_vs_live": exact_vs_live,
        "ok_exact_vs_live": all(v >= 1.8 for v in exact_vs_live.values()) if exact_vs_live else None,
        "exact_vs_trl": exact_forward["tokens_per_s"] / trl_tps if exact_forward and trl_version else None,
        "ok_exact_vs_trl": bool(exact_forward["tokens_per_s"] >= 1.5 * trl_tps) if exact_forward and trl_version else None,
        "cache_build_seconds": {mode: c["build_seconds"] for mode, c in caches.items()},
        "cache_bytes_per_token": {mode: c["bytes_per_token"] for mode, c in caches.items()},
        "jobs_per_cache_paper": per_cache,
        "cache_build_seconds_amortized": {mode: c["build_seconds"] / per_cache for mode, c in caches.items()}
        if per_cache else None,
        "compact_errors": errors,
        "rows": rows,
    }
    write_rows(rows, args.out)
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        _print_table(figures, args)
    return 0


def _side_parts(side: str) -> tuple[str, str]:
    """``kdlm_<loss>[_exact|_compact]`` -> (loss, signal)."""
    name = side.removeprefix("kdlm_")
    for signal in ("exact", "compact"):
        if name.endswith(f"_{signal}"):
            return name.removesuffix(f"_{signal}"), signal
    return name, "live"


def losses_for_errors() -> list[str]:
    """Every distillation loss (the compact signal's error is reported for each)."""
    return [name for name in LOSSES if name != "sft"]


def _best_run(runs: list[dict]) -> dict:
    """The fastest run: other load on the machine only ever slows a run down, so the best is the least noisy."""
    return max(runs, key=lambda r: r["tokens_per_s"])


def _print_table(figures: dict, args: argparse.Namespace) -> None:
    result = table(f"kdlm bench train: {figures['models']}; batch {args.batch_size}, max length {args.max_length}, "
                   f"{args.steps} timed steps after {args.warmup_steps}, best of {args.repeats}, "
                   f"{figures['device']}, {figures['threads']} threads, TRL {figures['trl'] or 'not measured'}",
                   ("side", "loss", "signal", "counted tokens", "seconds", "tokens/s", "all tokens/s", "first loss",
                    "vs live", "vs TRL", "vs forward"),
                   left=("side", "loss", "signal"))  # fmt: skip
    for r in figures["rows"]:
        result.add_row(r["side"], r["loss"], r["signal"], str(r["counted_tokens"]), f"{r['seconds']:.2f}",
                       f"{r['tokens_per_s']:.0f}", f"{r['all_tokens_per_s']:.0f}", f"{r['first_loss']:.4f}",
                       f"{r['vs_live']:.2f}x", "" if math.isnan(r["vs_trl"]) else f"{r['vs_trl']:.2f}x",
                       f"{r['vs_forward']:.2f}x")  # fmt: skip
    out = console(160)
    out.print(result)
    if figures["kdlm_vs_trl"] is not None:
        out.print(f"kdlm forward / TRL GKD = {figures['kdlm_vs_trl']:.2f}x (>= 1.0x: {mark(figures['ok_kdlm_vs_trl'])})")
    else:
        out.print(f"TRL not measured ({'--no-trl' if args.no_trl else TRL_HINT})")
    if figures["atkd_vs_forward"] is not None:
        out.print(f"kdlm atkd / kdlm forward = {figures['atkd_vs_forward']:.2f}x "
                  f"(>= 0.8x: {mark(figures['ok_atkd_vs_forward'])})")  # fmt: skip
    for loss, ratio in figures["exact_vs_live"].items():
        out.print(f"kdlm {loss} cached exact / live = {ratio:.2f}x (>= 1.8x: {mark(ratio >= 1.8)})")
    if figures["exact_vs_trl"] is not None:
        out.print(f"kdlm forward cached exact / TRL GKD = {figures['exact_vs_trl']:.2f}x "
                  f"(>= 1.5x: {mark(figures['ok_exact_vs_trl'])})")  # fmt: skip
    for mode, seconds in figures["cache_build_seconds"].items():
        amortized = figures["cache_build_seconds_amortized"]
        share = (f", {amortized[mode]:.2f} s per job over the {figures['jobs_per_cache_paper']:g} jobs that share a cache "
                 "in config/paper.yaml") if amortized else ""  # fmt: skip
        out.print(f"cache build ({mode}): {seconds:.1f} s, {figures['cache_bytes_per_token'][mode]:.0f} bytes/token{share}")
    if figures["compact_errors"]:
        ks = sorted({e["k"] for e in figures["compact_errors"]})
        errs = table("compact signal: relative loss error against exact (mean over batches); bytes/token",
                     ("loss", *(f"k={k}" for k in ks)), left=("loss",))  # fmt: skip
        by = {(e["loss"], e["k"]): e for e in figures["compact_errors"]}
        for loss in dict.fromkeys(e["loss"] for e in figures["compact_errors"]):
            errs.add_row(loss, *(f"{by[(loss, k)]['relative_error']:.2e}" for k in ks))
        first = figures["compact_errors"][0]
        errs.add_row("bytes/token", *(f"{8 * k + 8}" for k in ks))
        out.print(errs)
        out.print(f"exact signal: {first['exact_bytes_per_token']} bytes/token (hidden size x dtype)")
    if not figures["same_batches"]:
        out.print("[red]the sides did not train on the same tokens[/]")
    out.print(f"wrote {args.out}")
