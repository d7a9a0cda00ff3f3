"""Resumable checkpoints: find the newest complete one and refuse one left by a different run.

The HF Trainer writes `checkpoint-<step>/` (weights, optimizer, scheduler, RNG states, and last
`trainer_state.json`, whose presence marks the checkpoint complete). Beside them `kdlm_run.json`
records what the checkpoints belong to: the student's architecture (config.json), the data file's
hash, the method and the training settings that change the weights. A rerun resumes only when all of
it matches (as nanoGPT forces a checkpoint's model args to match); otherwise it stops with the keys
that differ, so a changed configuration never continues a stale run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict
from pathlib import Path

from transformers import AutoConfig

from kdlm.io import atomic_path
from kdlm.training.config import MethodConfig, TrainConfig

IDENTITY_FILE = "kdlm_run.json"
# settings that do not change the weights a run ends with
# settings that do not change the weights (gradient checkpointing recomputes the same gradient)
_NOT_IDENTITY = ("threads", "logging_steps", "save_steps", "report_to", "gradient_checkpointing")
# config.json entries that say nothing about the architecture
_NOT_ARCHITECTURE = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache", "output_attentions",
                     "output_hidden_states", "return_dict")  # fmt: skip


def _architecture(config: dict) -> dict:
    return {k: v for k, v in sorted(config.items()) if k not in _NOT_ARCHITECTURE}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_identity(student, teacher_path: str | None, data_path: Path, method: MethodConfig, cfg: TrainConfig,
                 template: str, sharded: bool = False, teacher_signal: dict | None = None) -> dict:  # fmt: skip
    """What a checkpoint must match to be resumed (JSON-normalized). A `sharded` (FSDP) run's checkpoints
    hold the optimizer state in shards, which only another FSDP run can resume; a run from a cached teacher
    signal names the cache's mode and fingerprint."""
    training = {k: v for k, v in asdict(cfg).items() if k not in _NOT_IDENTITY}
    identity = {
        "architecture": _architecture(student.config.to_dict()),
        "teacher": str(Path(teacher_path).resolve()) if teacher_path and Path(teacher_path).exists() else teacher_path,
        "data_sha256": _sha256(Path(data_path)),
        "method": {"loss": method.loss, **method.hparams},
        "training": training,
        "template": template,
    }
    if sharded:
        identity["optimizer_state"] = "sharded (strategy fsdp)"
    if teacher_signal is not None:
        identity["teacher_signal"] = teacher_signal
    return json.loads(json.dumps(identity, sort_keys=True))


def last_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The complete `checkpoint-<step>` directory with the highest step, or None."""
    if not Path(checkpoint_dir).is_dir():
        return None
    steps = []
    for child in Path(checkpoint_dir).iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", child.name)
        if match and (child / "trainer_state.json").exists():
            steps.append((int(match.group(1)), child))
    return max(steps)[1] if steps else None


def _differences(stored: dict, current: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key} (checkpoint {a!r}, now {b!r})")
    return keys


def claim_checkpoint_dir(checkpoint_dir: Path, identity: dict, resume: Path | None) -> None:
    """Check `resume` belongs to this run; without one, record `identity` for later resumes.

    Raises:
        ValueError: if the checkpoint directory belongs to another run (naming the keys that differ)
            or a checkpoint's config.json describes another architecture.
    """
    checkpoint_dir = Path(checkpoint_dir)
    path = checkpoint_dir / IDENTITY_FILE
    if resume is not None:
        if not path.exists():
            raise ValueError(f"{checkpoint_dir}: checkpoints without {IDENTITY_FILE}; remove the directory to start over")
        stored = json.loads(path.read_text())
        differ = _differences(stored, identity)
        if (resume / "config.json").exists():
            saved = json.loads(json.dumps(_architecture(AutoConfig.from_pretrained(resume).to_dict())))
            differ += _differences({"architecture": saved}, {"architecture": identity["architecture"]})
        if differ:
            raise ValueError(
                f"{checkpoint_dir}: the checkpoints belong to another run; differing: {'; '.join(differ[:8])}. "
                "Use another --checkpoint-dir or remove this one to start over"
            )
        return
    if int(os.environ.get("RANK", "0")) == 0:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n")
