"""The `teacher_signal` config section: whether and how the teacher's signal on offline rows is cached."""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("exact", "compact")


@dataclass
class TeacherSignalConfig:
    """How distillation gets the teacher's signal on offline rows (sources gt, teacher and the offline rows
    of mix_request_*); rows generated during training always use the live teacher."""

    cache: bool = True  # one teacher pass per (teacher, offline data) instead of one per student and method
    mode: str = "exact"  # exact: final hidden states (losses equal the live teacher's); compact: top-k
    top_k: int = 64  # compact mode: teacher log-probabilities kept per token (plus the target's and the rest)
    batch_size: int = 32  # sequences per teacher forward while building
    part_size: int = 512  # examples per part file: a killed build resumes after its last whole part

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        for name in ("top_k", "batch_size", "part_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
