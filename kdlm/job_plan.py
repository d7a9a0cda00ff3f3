"""The memory plan of a study's training jobs: `kdlm plan` prints it; where a profile declares the cluster's
GPUs (`gpu_memory_gb`, `max_gpus` of the training rules), the workflow takes each job's GPUs and strategy
from it and stops before submitting anything when a job fits nowhere (docs/design.md, "Scale").

The models are planned from their configs alone (`kdlm.memory_plan`): a teacher that the workflow fine-tunes
is planned from its base model, whose shape it keeps.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from kdlm.length_checks import lab_model_spec
from kdlm.sections import build
from kdlm.study import NO_TEACHER, SOURCES, Study
from kdlm.training.config import DistributedConfig, TrainConfig

GPU_COUNTS = (1, 2, 4, 8, 16)
GPU_MEMORY_GB = 80.0  # `kdlm plan`'s default: an 80 GB GPU (A100/H100)
MAX_GPUS = 8  # `kdlm plan`'s default: one node


@dataclass(frozen=True)
class Placement:
    """Where one job runs: its GPUs, strategy and teacher placement (the `distributed` section it gets)."""

    gpus: int
    strategy: str
    teacher_sharded: bool

    def distributed(self, section: dict | None) -> dict:
        """The job's `--distributed` value: the user's section as written, with the planned strategy and
        teacher placement."""
        teacher = "shard" if self.teacher_sharded else "replicate"
        values = {**(section or {}), "strategy": self.strategy, "teacher": teacher}
        if self.strategy != "fsdp":
            values.pop("cpu_offload", None)  # offloading shards needs shards
        return values


@dataclass
class Plan:
    """Every planned training job of a study: table rows, placements by key, and the jobs that fit nowhere."""

    section: DistributedConfig
    gpu_memory_gb: float
    rows: list[dict] = field(default_factory=list)
    placements: dict[tuple[str, str, str], Placement] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def placement(self, rule: str, student: str, teacher: str) -> Placement:
        """The placement of a `teacher_sft` (student = the teacher) or `distill` job (teacher `none` when the
        run loads none)."""
        return self.placements[(rule, student, teacher)]


def _job(name: str, student: str, teacher: str | None, cfg: TrainConfig):
    from kdlm.memory_plan import TrainingJob

    return TrainingJob(name=name, student=student, teacher=teacher, batch_size=cfg.batch_size,
                       max_length=cfg.max_length, bf16=cfg.bf16, teacher_float32=cfg.teacher_float32,
                       gradient_checkpointing=cfg.gradient_checkpointing)  # fmt: skip


class _LabVocabulary:
    """What a lab model's config needs of its tokenizer, before the tokenizer exists."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


LAB_TOKENIZER = Path("results/lab/tokenizer/tokenizer.json")


def _lab_vocabulary(lab: dict) -> int:
    """The lab tokenizer's size: the built one's when it exists, else `lab.tokenizer.vocab_size`, the BPE's
    ceiling (training can stop a little short of it, so the plan errs high)."""
    import json

    from kdlm.lab.spec import TokenizerSettings

    if LAB_TOKENIZER.is_file():
        vocab = json.loads(LAB_TOKENIZER.read_text())["model"]["vocab"]
        return len(vocab)
    return build(TokenizerSettings, lab.get("tokenizer"), "lab.tokenizer").vocab_size


def _planning_ref(config: dict, path: str, scratch: Path) -> str:
    """`path`, or for a lab model the workflow has not built yet, a directory holding the config.json it
    will have (from `lab.models.<name>` and the lab tokenizer's size)."""
    spec = lab_model_spec(config, path)
    if spec is None or Path(path, "config.json").is_file():
        return path
    from kdlm.lab.models import build_config

    directory = scratch / Path(path).name
    build_config(spec, _LabVocabulary(_lab_vocabulary(config["lab"]))).save_pretrained(directory)
    return str(directory)


def study_jobs(config: dict, scratch: Path) -> list[tuple[tuple[str, str, str], object, bool]]:
    """((rule, student, teacher), memory_plan.TrainingJob, shown in the table) of every training job kind.
    Lab models not built yet are planned from the configs they will have, written under `scratch`."""
    study = Study(config)
    training = build(TrainConfig, config.get("training"), "training")
    teacher_training = build(TrainConfig, config.get("teacher_training"), "teacher_training")
    base = {name: _planning_ref(config, spec["path"], scratch) for name, spec in config["teachers"].items()}
    jobs = []
    for teacher in study.teachers():
        if config["teachers"][teacher].get("finetune", False):
            jobs.append((("teacher_sft", teacher, NO_TEACHER),
                         _job(f"teacher fine-tuning {teacher}", base[teacher], None, teacher_training), True))  # fmt: skip
    seen = set()
    for run in study.runs():
        live = run.teacher != NO_TEACHER and SOURCES[run.source].needs_live_teacher(study.loss(run.method))
        teacher = run.teacher if live else NO_TEACHER
        key = ("distill", run.student, teacher)
        if key in seen:
            continue
        seen.add(key)
        path = _planning_ref(config, config["students"][run.student]["path"], scratch)
        name = f"distill {run.student} ← {teacher}" if live else f"distill {run.student} (no teacher)"
        jobs.append((key, _job(name, path, base[teacher] if live else None, training), live))
    return jobs


def plan_study(config: dict, gpu_memory_gb: float = GPU_MEMORY_GB, max_gpus: int = MAX_GPUS) -> Plan:
    """The plan of every training job of `config` under its `distributed` section, on GPUs of
    `gpu_memory_gb` with at most `max_gpus` per job."""
    from kdlm.memory_plan import choose, plan_rows

    if gpu_memory_gb <= 0 or max_gpus < 1:
        raise ValueError(f"gpu_memory_gb must be > 0 and max_gpus >= 1, got {gpu_memory_gb} and {max_gpus}")
    section = build(DistributedConfig, config.get("distributed"), "distributed")
    options = {
        "gpu_counts": [n for n in GPU_COUNTS if n <= max_gpus],
        "strategies": ("ddp", "fsdp") if section.strategy == "auto" else (section.strategy,),
        "teacher": section.teacher,
    }
    plan = Plan(section, gpu_memory_gb)
    with tempfile.TemporaryDirectory(prefix="kdlm-plan-") as scratch:
        jobs = study_jobs(config, Path(scratch))
        for key, job, _ in jobs:
            choice = choose(job, gpu_memory_gb, **options)
            if choice.estimate is None:
                plan.problems.append(choice.reason)
                continue
            e = choice.estimate
            plan.placements[key] = Placement(e.gpus, e.strategy, e.teacher_sharded)
        plan.rows = plan_rows([job for _, job, shown in jobs if shown], gpu_memory_gb, **options)
    return plan


TRAINING_RULES = ("teacher_sft", "distill")


def declared_gpus(set_resources: dict) -> dict:
    """`gpu_memory_gb` and `max_gpus` as a profile's `set-resources` declares them for the training rules
    (values may be numbers or Snakemake `Resource`s); {} when it declares none.

    Raises:
        ValueError: when the training rules declare different values, or a value is not a positive number.
    """
    found: dict[str, set] = {}
    for rule in TRAINING_RULES:
        resources = set_resources.get(rule) or {}
        for key in ("gpu_memory_gb", "max_gpus"):
            if key in resources:  # (Snakemake's Resources.get answers an empty Resource for a missing key)
                value = resources[key]
                found.setdefault(key, set()).add(getattr(value, "value", value))
    declared = {}
    for key, values in found.items():
        if len(values) > 1:
            raise ValueError(f"set-resources: {key} differs between {' and '.join(TRAINING_RULES)}: {sorted(values)}")
        value = values.pop()
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"set-resources: {key} must be a positive number, got {value!r}")
        declared[key] = int(value) if key == "max_gpus" else float(value)
    return declared


def profile_gpus(profile: Path) -> dict:
    """:func:`declared_gpus` of a profile directory's config.yaml."""
    import yaml

    path = Path(profile) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; --workflow-profile takes a profile directory")
    return declared_gpus((yaml.safe_load(path.read_text()) or {}).get("set-resources") or {})
