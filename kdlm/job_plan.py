"""The memory plan of a study's training jobs: `kdlm plan` prints it, the workflow takes each job's GPUs
and strategy from it and stops before submitting anything when a job fits nowhere (docs/design.md, "Scale").

The models are planned from their configs alone (`kdlm.memory_plan`): a teacher that the workflow fine-tunes
is planned from its base model, whose shape it keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlm.sections import build
from kdlm.study import NO_TEACHER, SOURCES, Study
from kdlm.training.config import DistributedConfig, TrainConfig

GPU_COUNTS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class Placement:
    """Where one job runs: its GPUs, strategy and teacher placement (the `distributed` section it gets)."""

    gpus: int
    strategy: str
    teacher_sharded: bool

    def distributed(self, section: DistributedConfig) -> dict:
        """The job's `--distributed` JSON: the user's section with the planned strategy and placement."""
        teacher = "shard" if self.teacher_sharded else "replicate"
        return {**section.__dict__, "strategy": self.strategy, "teacher": teacher}


@dataclass
class Plan:
    """Every planned training job of a study: table rows, placements by key, and the jobs that fit nowhere."""

    section: DistributedConfig
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


def study_jobs(config: dict) -> list[tuple[tuple[str, str, str], object, bool]]:
    """((rule, student, teacher), memory_plan.TrainingJob, shown in the table) of every training job kind."""
    study = Study(config)
    training = build(TrainConfig, config.get("training"), "training")
    teacher_training = build(TrainConfig, config.get("teacher_training"), "teacher_training")
    base = {name: spec["path"] for name, spec in config["teachers"].items()}
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
        path = config["students"][run.student]["path"]
        name = f"distill {run.student} ← {teacher}" if live else f"distill {run.student} (no teacher)"
        jobs.append((key, _job(name, path, base[teacher] if live else None, training), live))
    return jobs


def plan_study(config: dict) -> Plan:
    """The plan of every training job of `config` under its `distributed` section."""
    from kdlm.memory_plan import choose, plan_rows

    section = build(DistributedConfig, config.get("distributed"), "distributed")
    options = {
        "gpu_counts": [n for n in GPU_COUNTS if n <= section.max_gpus],
        "strategies": ("ddp", "fsdp") if section.strategy == "auto" else (section.strategy,),
        "teacher": section.teacher,
    }
    plan = Plan(section)
    jobs = study_jobs(config)
    for key, job, _ in jobs:
        choice = choose(job, section.gpu_memory_gb, **options)
        if choice.estimate is None:
            plan.problems.append(choice.reason)
            continue
        e = choice.estimate
        plan.placements[key] = Placement(e.gpus, e.strategy, e.teacher_sharded)
    plan.rows = plan_rows([job for _, job, shown in jobs if shown], section.gpu_memory_gb, **options)
    return plan
