"""Typed training settings; the single source of defaults for `kdlm sft` and `kdlm distill`."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")


@dataclass
class TrainConfig:
    """Optimisation settings. Defaults are the paper's (Zhong et al., 2024) except where noted."""

    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    lr: float = 2e-5
    scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    batch_size: int = 1  # per device
    grad_accum: int = 2
    max_grad_norm: float = 1.0
    max_length: int = 512
    bf16: bool = False  # the paper trains in bf16; off by default because CPUs gain nothing from it
    seed: int = 0
    logging_steps: int = 10
    threads: int | None = None  # torch CPU threads; None leaves torch's default

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; allowed: {list(SCHEDULERS)}")
        for name in ("batch_size", "grad_accum", "max_length", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"training {name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"training lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"training warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("training needs epochs > 0 or max_steps > 0")

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build from a config mapping; unknown keys raise instead of being ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; allowed: {sorted(known)}")
        return cls(**values)


@dataclass
class MethodConfig:
    """A named loss configuration from the study config: the loss plus its hyperparameters."""

    loss: str
    hparams: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict) -> MethodConfig:
        values = dict(values)
        if "loss" not in values:
            raise ValueError(f"method {values} has no 'loss' key")
        loss = values.pop("loss")
        return cls(loss=loss, hparams=values)
