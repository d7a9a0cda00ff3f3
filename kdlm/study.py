"""The study model: sample sources, run ids, metrics and the run matrix of a config.

Every question of the form "what does this study train, on what, from which teacher?" is answered
here and only here: the Snakemake workflow plans its jobs from it, the mixing stage and the trainer
read the sources' rules from it, the report and the plots read run ids and metrics from it; the checks
of a config beyond its schema are in kdlm.config_checks. It imports no torch (the workflow imports it
at planning time); see docs/design.md, "The study model".
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlm.decoding import GenerateConfig
from kdlm.sections import build, check_range

# --------------------------------------------------------------------------------------- sources

ONLINE_NEVER = "never"  # every row trains on its offline response
ONLINE_ALL = "all"  # every row is answered by the current student during training
ONLINE_SHARE = "share"  # a `mix.ratio` share of the rows (chosen by hash of seed and id) is answered on-policy
ONLINE_TOKENS = "tokens"  # every row is decoded token by token, each token from the student or the teacher


@dataclass(frozen=True)
class Source:
    """Where one sample source's training responses come from."""

    name: str
    responses: str  # "gt" | "teacher": the offline response each row carries
    online: str  # ONLINE_NEVER | ONLINE_ALL | ONLINE_SHARE | ONLINE_TOKENS
    summary: str

    @property
    def needs_teacher_answers(self) -> bool:
        """Whether building its training file needs the teacher's generated answers."""
        return self.responses == "teacher"

    @property
    def generates_during_training(self) -> bool:
        return self.online != ONLINE_NEVER

    def needs_live_teacher(self, loss: str) -> bool:
        """Whether training `loss` on this source loads the teacher model: every loss but `sft` compares
        with the teacher's distribution; `sft` needs it only where the teacher helps decode (mix_token)."""
        return loss != "sft" or self.online == ONLINE_TOKENS

    def needs_teacher(self, loss: str) -> bool:
        """Whether a run of `loss` on this source belongs to a teacher (else its teacher is `none`)."""
        return self.needs_teacher_answers or self.needs_live_teacher(loss)

    def reads_teacher_signal(self, loss: str) -> bool:
        """Whether training `loss` on this source can read its offline rows' teacher signal from a cache
        (kdlm.teacher_cache): a loss that compares with the teacher on a source with offline rows; mix_token's
        rows are all generated during training."""
        return loss != "sft" and self.online in (ONLINE_NEVER, ONLINE_SHARE)

    def online_share(self, ratio: float) -> float:
        """The on-policy share of its rows (the `ratio` provenance column of the training file)."""
        return {ONLINE_NEVER: 0.0, ONLINE_ALL: 1.0}.get(self.online, ratio)


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source("gt", "gt", ONLINE_NEVER, "the data set's ground-truth responses"),
        Source("teacher", "teacher", ONLINE_NEVER, "the teacher's generated responses (SeqKD data)"),
        Source("student", "gt", ONLINE_ALL, "the student's own responses, generated every step"),
        Source("mix_token", "teacher", ONLINE_TOKENS, "each token from the student with probability ratio"),
        Source("mix_request_teacher", "teacher", ONLINE_SHARE, "a ratio share of requests on-policy, the rest teacher"),
        Source("mix_request_gt", "gt", ONLINE_SHARE, "a ratio share of requests on-policy, the rest ground truth"),
    )
}


def source(name: str) -> Source:
    """The source called `name`; a ValueError naming the allowed ones otherwise."""
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; allowed: {list(SOURCES)}")
    return SOURCES[name]


# ---------------------------------------------------------------------------------------- run ids

NO_TEACHER = "none"
RUN_ID_PATTERN = r"(?P<student>[^/]+)__(?P<teacher>[^/]+)/(?P<source>[^/]+)/(?P<method>[^/]+)/seed(?P<seed>\d+)"
RUN_ID_REGEX = re.sub(r"\(\?P<\w+>", "(?:", RUN_ID_PATTERN)  # the same without named groups (wildcards)
_RUN_ID = re.compile(RUN_ID_PATTERN)


@dataclass(frozen=True)
class RunId:
    """One trained student: `{student}__{teacher}/{source}/{method}/seed{seed}` (teacher `none` when the
    run needs none); also its directory under results/runs/."""

    student: str
    teacher: str
    source: str
    method: str
    seed: int

    def __str__(self) -> str:
        return f"{self.student}__{self.teacher}/{self.source}/{self.method}/seed{self.seed}"

    @classmethod
    def parse(cls, text: str) -> RunId:
        match = _RUN_ID.fullmatch(text)
        if not match:
            raise ValueError(f"not a run id ({{student}}__{{teacher}}/{{source}}/{{method}}/seed{{seed}}): {text!r}")
        return cls(**{**match.groupdict(), "seed": int(match["seed"])})

    @classmethod
    def search(cls, text: str) -> RunId | None:
        """The last run id inside a longer path (e.g. results/runs/<run>/train_log.parquet), if any."""
        found = list(_RUN_ID.finditer(text))
        return cls.parse(found[-1].group(0)) if found else None

    def label(self) -> dict[str, Any]:
        """The description stored with its evaluations (kdlm.report's label fields)."""
        return {"kind": "run", "model": str(self), "student": self.student, "teacher": self.teacher,
                "source": self.source, "method": self.method, "seed": self.seed}  # fmt: skip


# ---------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    """A metric of the summary table: the per-example column it is read from and how it is printed."""

    name: str
    column: str | None  # per-example column of an evaluation parquet; None: read from its own files
    digits: int = 3
    scored: bool = True  # computed from prediction and reference by kdlm.evaluation.metrics.SCORERS[name]


EVAL_METRICS: tuple[Metric, ...] = (
    Metric("rouge_l", "rouge_l"),
    Metric("exact_match", "exact_match"),
    Metric("response_tokens", "n_response_tokens", digits=1, scored=False),  # counted by the generation
)
JUDGE_METRIC = Metric("judge", None)
HARNESS_METRIC = Metric("harness", None)
METRICS: dict[str, Metric] = {m.name: m for m in (*EVAL_METRICS, JUDGE_METRIC, HARNESS_METRIC)}


# ------------------------------------------------------------------------------- workflow sections


@dataclass
class Threads:
    """torch CPU threads per job kind; Snakemake schedules jobs so that their threads fit in --cores."""

    train: int = 2
    generate: int = 2
    evaluate: int = 1
    # distillation and teacher-signal jobs; unset: `train`. Tiny lab students keep one thread busy but not
    # two, so two one-thread jobs side by side finish sooner than the same jobs one after another.
    distill: int | None = None

    def __post_init__(self) -> None:
        if self.distill is None:
            self.distill = self.train
        for kind in ("train", "generate", "evaluate", "distill"):
            check_range(kind, getattr(self, kind), minimum=1)


@dataclass
class MixSettings:
    """The `mix` section: the mixes' on-policy share and draw, and extra sources `snakemake mixes` builds."""

    ratio: float = 0.5
    seed: int = 0
    sources: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_range("ratio", self.ratio, minimum=0, maximum=1)


# -------------------------------------------------------------------------------------- the study


class Study:
    """The run matrix and every file list of one (schema-valid) config."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.spec = config["study"]
        self.threads = build(Threads, config.get("threads"), "threads")
        self.mix = build(MixSettings, config.get("mix"), "mix")
        self.teacher_generation = build(GenerateConfig, config.get("teacher_generation"), "teacher_generation")
        self.lab_models = dict(config["lab"].get("models", {})) if config["lab"]["enabled"] else {}
        pretraining = config["lab"].get("pretraining") or {}
        self.lab_pretraining = bool(self.lab_models) and bool(pretraining.get("enabled", False))
        self.lab_pretraining_settings = pretraining
        self.claims = dict(config.get("claims") or {})
        self.claims_enabled = bool(self.claims.pop("enabled", False))
        self.template = config["prompt_template"]
        self.train_dataset = config["train_split"]["dataset"]
        self.train_split = config["train_split"]["split"]
        evaluation = config["evaluation"]
        self.judge = dict(evaluation.get("judge") or {})
        self.judge_enabled = bool(self.judge.pop("enabled", False))
        self.lm_eval = dict(evaluation.get("lm_eval") or {})
        self.lm_eval_enabled = bool(self.lm_eval.pop("enabled", False))

    def lab_pretraining_training(self, model: str) -> dict:
        """The training keys of one lab model's pretraining: `lab.pretraining.training`, then its own
        `lab.pretraining.models.<name>` keys on top."""
        settings = self.lab_pretraining_settings
        return {**(settings.get("training") or {}), **((settings.get("models") or {}).get(model) or {})}

    # ------------------------------------------------------------------------------ the matrix

    def pairs(self) -> list[tuple[str, str]]:
        """(student, teacher) of every distilled pair: `study.pairs` when given, else students × teachers."""
        if "pairs" in self.spec:
            return [(pair["student"], pair["teacher"]) for pair in self.spec["pairs"]]
        return [(s, t) for s in self.spec["students"] for t in self.spec["teachers"]]

    def students(self) -> list[str]:
        return list(dict.fromkeys(s for s, _ in self.pairs()))

    def teachers(self) -> list[str]:
        return list(dict.fromkeys(t for _, t in self.pairs()))

    def tasks(self) -> list[str]:
        return list(self.spec.get("tasks", list(self.config["evaluation"]["tasks"])))

    def grids(self) -> list[tuple[list[str], list[str]]]:
        """(sources, methods) blocks: `study.sources` × `study.methods`, then each of `study.grids`."""
        blocks = [(self.spec["sources"], self.spec["methods"])]
        return blocks + [(g["sources"], g["methods"]) for g in self.spec.get("grids", [])]

    def sources(self) -> list[str]:
        """Every source some run trains on, once, in order."""
        return list(dict.fromkeys(s for sources, _ in self.grids() for s in sources))

    def loss(self, method: str) -> str:
        return self.config["methods"][method]["loss"]

    def run_teacher(self, teacher: str, source_name: str, method: str) -> str:
        """The teacher a run belongs to: `none` when it neither loads a teacher nor reads its answers."""
        return teacher if SOURCES[source_name].needs_teacher(self.loss(method)) else NO_TEACHER

    def runs(self) -> list[RunId]:
        """Every trained student, once (teacher-free runs are shared by all teachers of a student)."""
        result: dict[str, RunId] = {}
        for student, teacher in self.pairs():
            for sources, methods in self.grids():
                for source_name, method, seed in itertools.product(sources, methods, self.spec["seeds"]):
                    run = RunId(student, self.run_teacher(teacher, source_name, method), source_name, method, seed)
                    result.setdefault(str(run), run)
        return list(result.values())

    def eval_models(self) -> list[str]:
        """Every teacher and untrained student of the study's pairs, each once, and every run."""
        return ([f"teacher/{t}" for t in self.teachers()] + [f"base/{s}" for s in self.students()]
                + [str(r) for r in self.runs()])  # fmt: skip

    def metrics(self) -> list[str]:
        """The summary's metrics, each plotted as results/plots/scores_<metric>.png."""
        names = [m.name for m in EVAL_METRICS]
        return names + ["judge"] * self.judge_enabled + ["harness"] * self.lm_eval_enabled

    def mix_teacher(self, teacher: str, source_name: str) -> str:
        """Whose answers a source's training file holds: the teacher's, or `none` for ground truth."""
        return teacher if SOURCES[source_name].needs_teacher_answers else NO_TEACHER

    def baseline_method(self) -> str:
        """The method Δ is taken against: the first study method whose loss is forward KL ('' if none)."""
        return next((m for m in self.spec["methods"] if self.loss(m) == "forward"), "")

    # ------------------------------------------------------------------------------- the models

    def teacher_dir(self, teacher: str) -> str:
        spec = self.config["teachers"][teacher]
        return f"results/models/teachers/{teacher}" if spec.get("finetune", False) else spec["path"]

    def dataset_split(self, dataset: str, split: str) -> dict[str, str]:
        """`{path, split, name}` of one split: a config string is the path (for format `hf` a hub id or
        directory whose HF split has the same name as ours)."""
        spec = self.config["datasets"][dataset]["splits"][split]
        spec = {"path": spec} if isinstance(spec, str) else dict(spec)
        if self.config["datasets"][dataset]["format"] == "hf":
            spec.setdefault("split", split)
        return spec

    def missing_inputs(self) -> list[str]:
        """A note per data file or local model directory of the study that is not there (yet): the study
        still plans, and the jobs that need it fail until it arrives."""
        refs = [("train_split", self.config["train_split"])]
        refs += [(f"evaluation.tasks.{t}", self.config["evaluation"]["tasks"][t]) for t in self.tasks()]
        notes = []
        for key, ref in refs:
            path = self.dataset_split(ref["dataset"], ref["split"])["path"]
            hub = self.config["datasets"][ref["dataset"]]["format"] == "hf"
            if not path.startswith("results/") and not Path(path).exists() and not hub:
                notes.append(f"{key}: data file {path} does not exist yet; its prepare job fails until it does")
        models = [(f"students.{s}", self.config["students"][s]["path"]) for s in self.students()]
        models += [(f"teachers.{t}", self.config["teachers"][t]["path"]) for t in self.teachers()]
        for key, path in models:
            if (Path(path).is_absolute() or path.startswith(".")) and not Path(path).is_dir():
                notes.append(f"{key}.path: {path} is not a directory here; jobs that load it fail until it is")
        return list(dict.fromkeys(notes))

    def eval_target(self, model: str) -> tuple[str, dict[str, Any]]:
        """(model directory, description) of an evaluation target: `teacher/<name>`, `base/<student>`
        (untrained) or a run id."""
        kind, _, name = model.partition("/")
        empty = {"student": "", "teacher": "", "source": "", "method": "", "seed": 0}
        if kind == "teacher":
            return self.teacher_dir(name), {**empty, "kind": "teacher", "model": model, "teacher": name}
        if kind == "base":
            return self.config["students"][name]["path"], {**empty, "kind": "base", "model": model, "student": name}
        run = RunId.parse(model)
        return f"results/runs/{run}", run.label()
