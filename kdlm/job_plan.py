"""The memory plan of a study's training jobs: `kdlm plan` prints it; where a profile declares the cluster's
GPUs (`gpu_memory_gb`, `max_gpus` of the training rules), the workflow takes each job's GPUs and strategy
from it and stops before submitting anything when a job fits nowhere (docs/design.md, "Scale").

The models are planned from their configs alone (`kdlm.memory_plan`): a teacher that the workflow fine-tunes
is planned from its base model, whose shape it keeps.

The plan also counts the teacher's forward compute of the distillation jobs, with and without the cached
teacher signal (`teacher_signal` section, :func:`teacher_compute`, :func:`format_teacher_compute`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from kdlm.length_checks import lab_model_spec
from kdlm.sections import build
from kdlm.study import NO_TEACHER, ONLINE_TOKENS, SOURCES, RunId, Study
from kdlm.teacher_cache.config import TeacherSignalConfig
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
    """Every planned training job of a study: table rows, placements by key, the jobs that fit nowhere, and
    per teacher the forward compute of its distillation jobs with and without the teacher-signal cache."""

    section: DistributedConfig
    gpu_memory_gb: float
    rows: list[dict] = field(default_factory=list)
    placements: dict[tuple[str, str, str], Placement] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    signal: TeacherSignalConfig = field(default_factory=TeacherSignalConfig)
    teacher_compute: list[dict] = field(default_factory=list)  # rows of :func:`teacher_compute`

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
    signal = build(TeacherSignalConfig, config.get("teacher_signal"), "teacher_signal")
    plan = Plan(section, gpu_memory_gb, signal=signal)
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
        plan.teacher_compute = teacher_compute(config, Path(scratch), plan.signal)
    return plan


# ----------------------------------------------------------------------------------- teacher compute


def live_share(source_name: str, ratio: float) -> float:
    """The share of a source's rows that are generated during training, so that the live teacher scores them
    even with the cache: all of `student` and `mix_token` (decoded token by token with the teacher), the
    `mix.ratio` share of `mix_request_*`, none of `gt` and `teacher`."""
    src = SOURCES[source_name]
    return 1.0 if src.online == ONLINE_TOKENS else src.online_share(ratio)


def teacher_compute(config: dict, scratch: Path, signal: TeacherSignalConfig | None = None) -> list[dict]:
    """Per teacher of the study, the teacher's forward compute over the training data of the distillation
    jobs that load it (runs whose loss is not `sft`, and every `mix_token` run), without and with the cached
    teacher signal (`signal`, default the `teacher_signal` section of `config`).

    Data sizes are unknown at plan time, so compute is counted in passes over one training file and in FLOP
    per training token of one such pass (every file taken as the same number of tokens). A teacher forward
    costs 2·P FLOP per token, P all the teacher's parameters as the memory plan counts them (attention's
    context-length term left out). Without the cache every job runs the teacher over its file every epoch:
    jobs × epochs passes. With it, one pass per (teacher, training file) over the file's offline rows builds
    the cache, the rows generated during training (:func:`live_share`) still take a live pass every epoch, and
    each job's epoch turns the cached rows into logits: 2·d·V FLOP per token in `exact` mode (the output layer
    on the stored hidden states; d the hidden size, V the vocabulary), about 0 in `compact` mode (stored top-k).
    With `training.max_steps` > 0 the epochs are unknown: `training.epochs` is counted (1 when it is 0), and
    the row says so (`epochs_assumed`).
    """
    from kdlm.memory_plan import model_shape

    study = Study(config)
    signal = signal or build(TeacherSignalConfig, config.get("teacher_signal"), "teacher_signal")
    training = build(TrainConfig, config.get("training"), "training")
    assumed = training.max_steps > 0
    epochs = training.epochs if training.epochs > 0 else 1.0
    runs = study.runs()

    def loads_teacher(run: RunId) -> bool:
        return SOURCES[run.source].needs_live_teacher(study.loss(run.method))

    rows = []
    for teacher in study.teachers():
        jobs = [r for r in runs if r.teacher == teacher and loads_teacher(r)]
        shape = model_shape(_planning_ref(config, config["teachers"][teacher]["path"], scratch))
        forward = 2.0 * shape.parameters
        readout = 2.0 * shape.hidden * shape.vocab if signal.mode == "exact" else 0.0
        shares = [live_share(r.source, study.mix.ratio) for r in jobs]
        # one cache per (teacher, training file) that jobs read it from, as the workflow builds them (its
        # `teacher_signal` rule); a file is (whose answers, source)
        caches = {
            (study.mix_teacher(teacher, r.source), r.source): s
            for r, s in zip(jobs, shares, strict=True)
            if SOURCES[r.source].reads_teacher_signal(study.loss(r.method))
        }
        passes_live = epochs * len(jobs)
        flop_live = forward * passes_live
        if signal.cache:
            passes_cached = sum(1 - s for s in caches.values()) + epochs * sum(shares)
            flop_cached = forward * passes_cached + readout * epochs * sum(1 - s for s in shares)
        else:
            passes_cached, flop_cached = passes_live, flop_live
        rows.append(
            {
                "teacher": teacher,
                "parameters": shape.parameters,
                "hidden": shape.hidden,
                "vocab": shape.vocab,
                "jobs": len(jobs),
                "caches": len(caches) if signal.cache else 0,
                "epochs": epochs,
                "epochs_assumed": assumed,
                "passes_live": passes_live,
                "passes_cached": passes_cached,
                "flop_live": flop_live,
                "flop_cached": flop_cached,
                "saving": 1 - flop_cached / flop_live if flop_live else None,
            }
        )
    return rows


def _si(value: float, prefixes: tuple[str, ...] = ("k", "M", "G", "T", "P", "E")) -> str:
    """`value` with three significant digits and a prefix: 13.3 G, 959 G, 1.23 T."""
    scaled, prefix = float(value), ""
    for name in prefixes:
        if abs(scaled) < 999.5:
            break
        scaled, prefix = scaled / 1000, name
    digits = 2 if abs(scaled) < 9.995 else 1 if abs(scaled) < 99.95 else 0
    return f"{scaled:.{digits}f}{' ' + prefix if prefix else ''}"


def format_teacher_compute(plan: Plan) -> str:
    """A title line, a markdown table of `plan.teacher_compute` (one row per teacher, a total row when there
    are several) and a legend line."""
    rows = plan.teacher_compute
    signal = plan.signal
    head = ["teacher", "params", "jobs", "passes live", "passes cached", "FLOP/token live", "FLOP/token cached",
            "saving"]  # fmt: skip
    if len(rows) > 1:
        total = {key: sum(r[key] for r in rows) for key in ("jobs", "passes_live", "passes_cached", "flop_live",
                                                           "flop_cached")}  # fmt: skip
        saving = 1 - total["flop_cached"] / total["flop_live"] if total["flop_live"] else None
        rows = [*rows, {**total, "teacher": "all teachers", "parameters": None, "saving": saving}]
    body = [
        [
            r["teacher"],
            "-" if r["parameters"] is None else _si(r["parameters"], ("k", "M", "B", "T")),
            str(r["jobs"]),
            f"{round(r['passes_live'], 2):g}",
            f"{round(r['passes_cached'], 2):g}",
            _si(r["flop_live"]),
            _si(r["flop_cached"]),
            "-" if r["saving"] is None else f"{100 * r['saving']:.0f}%",
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    epochs = {r["epochs"] for r in plan.teacher_compute}
    per_job = f"{epochs.pop():g} epochs per job" if len(epochs) == 1 else "no distill job"
    if any(r["epochs_assumed"] for r in plan.teacher_compute):
        per_job += " (training.max_steps > 0: epochs assumed)"
    readout = {"exact": ", 2·d·V a cached job-epoch", "compact": ", ≈0 a cached job-epoch"}[signal.mode]
    if signal.cache:
        setting = f"teacher_signal: cache, mode {signal.mode}"
    else:
        setting, readout = "teacher_signal.cache false: cached = live", ""
    title = f"teacher forward compute of the distill jobs ({setting}; {per_job}):"
    legend = f"passes over one training file; FLOP per token of one pass: 2·P a teacher forward{readout}"
    return "\n".join([title, line(head), rule, *(line(b) for b in body), "", legend])


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
            raise ValueError(
                f"set-resources: {key} differs between {' and '.join(TRAINING_RULES)}: {sorted(values)}"
            )
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
