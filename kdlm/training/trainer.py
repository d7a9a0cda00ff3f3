"""DistillTrainer: the HF Trainer with a distillation loss, so DDP/FSDP/DeepSpeed come from accelerate.

The teacher is frozen, kept in eval mode, never wrapped for DDP and only run under `no_grad`. The loss
is any entry of `kdlm.losses.LOSSES`; `sft` (plain cross-entropy) runs without a teacher.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from kdlm.data.tokenize import IGNORE_INDEX, collate
from kdlm.io import atomic_dir
from kdlm.training.config import MethodConfig, TrainConfig

log = logging.getLogger(__name__)


class DistillTrainer(Trainer):
    """Trainer whose loss compares the student's next-token distributions with the teacher's."""

    def __init__(self, *args, teacher=None, method: MethodConfig, vocab_size: int, **kwargs) -> None:
        from kdlm.losses import LOSSES

        super().__init__(*args, **kwargs)
        self.teacher = teacher
        if teacher is not None:
            teacher.to(self.args.device).eval().requires_grad_(False)
        self.loss_fn = LOSSES[method.loss]
        self.hparams = method.hparams
        self.vocab_size = vocab_size
        # our losses are means over counted tokens: let the Trainer divide by accumulation steps
        self.loss_is_scaled_for_ga = False
        self._pending_stats: dict[str, list[float]] = {}
        self._tokens_since_log = 0
        self._last_log_time = time.perf_counter()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"][:, 1:]  # (B, T) -> (B, T-1): position t predicts token t+1
        model_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        outputs = model(**model_inputs)
        student_logits = outputs.logits[:, :-1, : self.vocab_size]  # (B, T-1, V)
        teacher_logits = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(**model_inputs).logits[:, :-1, : self.vocab_size]  # (B, T-1, V)
        stats: dict[str, float] = {}
        loss = self.loss_fn(student_logits, teacher_logits, labels, stats=stats, **self.hparams)
        if model.training:
            self._tokens_since_log += int((labels != IGNORE_INDEX).sum())
            for key, value in stats.items():
                self._pending_stats.setdefault(key, []).append(float(value))
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:
            now = time.perf_counter()
            logs["tokens_per_s"] = self._tokens_since_log / max(now - self._last_log_time, 1e-9)
            self._tokens_since_log, self._last_log_time = 0, now
            for key, values in self._pending_stats.items():
                logs[key] = sum(values) / len(values)
            self._pending_stats = {}
        super().log(logs, *args, **kwargs)


class LogCollector(TrainerCallback):
    """Keeps every training log row for train_log.parquet."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            row = {"step": state.global_step, "epoch": state.epoch or 0.0, **logs}
            row["lr"] = row.pop("learning_rate", float("nan"))
            row.setdefault("grad_norm", float("nan"))
            self.rows.append(row)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _versions() -> dict[str, str]:
    import transformers

    import kdlm

    return {
        "kdlm": kdlm.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def train(
    *,
    student_path: str,
    teacher_path: str | None,
    data_path: Path,
    out_dir: Path,
    method: MethodConfig,
    cfg: TrainConfig,
    template: str = "paper",
    checkpoint_dir: Path | None = None,
    extra_info: dict | None = None,
) -> dict:
    """Train one student and write it (model, tokenizer, train_log.parquet, run.json) atomically.

    Returns:
        The run record written to run.json.
    """
    import pandas as pd

    from kdlm.losses import validate_hparams
    from kdlm.models import check_vocab_compatible, count_parameters, load_model, load_tokenizer, set_threads
    from kdlm.schemas import TRAIN_LOG, write_table
    from kdlm.training.data import ExampleDataset, load_pairs

    validate_hparams(method.loss, method.hparams)
    if method.loss != "sft" and teacher_path is None:
        raise ValueError(f"loss {method.loss!r} needs a teacher; only 'sft' trains without one")
    set_threads(cfg.threads)
    start = time.perf_counter()
    tokenizer = load_tokenizer(student_path)
    student = load_model(student_path)
    teacher = None
    vocab_size = len(tokenizer)
    if method.loss != "sft":
        teacher = load_model(teacher_path)
        vocab_size = check_vocab_compatible(student, teacher, tokenizer, load_tokenizer(teacher_path))
    prompts, responses = load_pairs(data_path, template)
    dataset = ExampleDataset(prompts, responses, tokenizer, cfg.max_length)
    log.info("training on %d examples (%d label tokens)", len(dataset), dataset.n_label_tokens)

    checkpoint_dir = checkpoint_dir or out_dir.with_name(out_dir.name + ".checkpoints")
    args = TrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        max_grad_norm=cfg.max_grad_norm,
        bf16=cfg.bf16,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )
    collector = LogCollector()
    trainer = DistillTrainer(
        model=student,
        args=args,
        train_dataset=dataset,
        data_collator=partial(collate, pad_token_id=tokenizer.pad_token_id),
        callbacks=[collector],
        teacher=teacher,
        method=method,
        vocab_size=vocab_size,
    )
    result = trainer.train()
    run = {
        "student": student_path,
        "teacher": teacher_path if teacher is not None else None,
        "data": str(data_path),
        "method": {"loss": method.loss, **method.hparams},
        "training": asdict(cfg),
        "template": template,
        "n_examples": len(dataset),
        "n_label_tokens": dataset.n_label_tokens,
        "parameters": count_parameters(student),
        "global_steps": result.global_step,
        "train_seconds": time.perf_counter() - start,
        "versions": _versions(),
        "git_commit": _git_commit(),
        **(extra_info or {}),
    }
    with atomic_dir(out_dir) as tmp:
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(tmp)
        write_table(pd.DataFrame(collector.rows, columns=None), tmp / "train_log.parquet", TRAIN_LOG, extra_columns=True)
        (tmp / "run.json").write_text(json.dumps(run, indent=2, sort_keys=True))
    return run
