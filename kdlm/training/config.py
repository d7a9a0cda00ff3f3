"""Typed training settings; the single source of defaults for `kdlm sft` and `kdlm distill`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from kdlm.sections import build

SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
LOSS_NORMALIZATIONS = ("tokens", "micro_batch")
REPORTERS = ("none", "tensorboard", "wandb", "mlflow")
STRATEGIES = ("auto", "ddp", "fsdp")
TEACHER_PLACEMENTS = ("auto", "replicate", "shard")


def onpolicy_room(max_new_tokens: int, max_length: int) -> str | None:
    """Why on-policy responses of `max_new_tokens` (and their EOS) leave no prompt room within training
    `max_length`, or None; planning, the trainer and the batcher all ask this one rule."""
    if max_length - max_new_tokens - 1 < 1:
        return (f"onpolicy max_new_tokens={max_new_tokens} leaves no room for a prompt within training "
                f"max_length={max_length}; allowed: max_new_tokens <= {max_length - 2}")  # fmt: skip
    return None


@dataclass
class OnPolicyConfig:
    """How the trainer decodes the on-policy rows (sources student, mix_token, mix_request_*)."""

    max_new_tokens: int | None = None  # None: half of the training max_length
    sample: bool = False  # greedy by default
    temperature: float = 1.0  # used when sampling
    top_p: float = 1.0  # used when sampling

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")



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
    save_steps: int = 500  # optimizer steps between resumable checkpoints (in the checkpoint directory)
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    # "tokens": each optimizer step's loss is the mean over all its counted tokens, across micro-batches and
    # processes; "micro_batch": the reference code's mean per micro-batch, averaged over accumulation steps
    loss_normalization: str = "tokens"
    gradient_checkpointing: bool = False  # recompute each decoder layer's activations in the backward pass
    teacher_float32: bool = False  # keep the teacher in float32 instead of the training precision
    report_to: str = "none"  # experiment tracking: none, tensorboard (offline), wandb or mlflow (comma-separated)
    onpolicy: OnPolicyConfig = field(default_factory=OnPolicyConfig)

    def __post_init__(self) -> None:
        if isinstance(self.onpolicy, dict):
            self.onpolicy = build(OnPolicyConfig, self.onpolicy, "onpolicy")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; allowed: {list(SCHEDULERS)}")
        for name in ("batch_size", "grad_accum", "logging_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("epochs > 0 or max_steps > 0 is needed")
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f"unknown loss_normalization {self.loss_normalization!r}; allowed: {list(LOSS_NORMALIZATIONS)}")
        unknown = [name for name in self.reporters if name not in REPORTERS]
        if unknown:
            raise ValueError(f"unknown report_to {unknown}; allowed: {list(REPORTERS)}")
        self._derived_onpolicy_length = self.onpolicy.max_new_tokens is None
        if self._derived_onpolicy_length:
            self.onpolicy = replace(self.onpolicy, max_new_tokens=max(self.max_length // 2, 1))

    @property
    def reporters(self) -> list[str]:
        """The trackers of `report_to` ([] for none)."""
        names = [name.strip() for name in self.report_to.split(",") if name.strip()]
        return [] if names == ["none"] else names

    def capped(self, max_length: int) -> TrainConfig:
        """These settings with `max_length` lowered to a model's context (an on-policy length that was
        derived from `max_length` is derived again)."""
        onpolicy = replace(self.onpolicy, max_new_tokens=None) if self._derived_onpolicy_length else self.onpolicy
        return replace(self, max_length=min(self.max_length, max_length), onpolicy=onpolicy)



@dataclass
class DistributedConfig:
    """How a training job spreads over its GPUs (the `distributed` section; docs/design.md, "Scale").

    `strategy` "auto" takes the memory plan's choice (`kdlm plan`) where the profile declares the
    cluster's GPUs, and DDP elsewhere; "fsdp" fully shards the student's parameters, gradients and
    optimizer state (FSDP2, one unit per decoder layer). `teacher` "auto" replicates the frozen
    teacher unless the plan shards it.
    """

    strategy: str = "auto"
    cpu_offload: bool = False  # fsdp: keep sharded parameters and optimizer state in CPU memory
    teacher: str = "auto"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; allowed: {list(STRATEGIES)}")
        if self.teacher not in TEACHER_PLACEMENTS:
            raise ValueError(f"unknown teacher placement {self.teacher!r}; allowed: {list(TEACHER_PLACEMENTS)}")
        if self.cpu_offload and self.strategy == "ddp":
            raise ValueError("cpu_offload needs strategy fsdp (or auto)")


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
