"""The study model: sample sources, run ids, metrics, the run matrix of a config, and the checks a
JSON schema cannot express.

Every question of the form "what does this study train, on what, from which teacher?" is answered
here and only here: the Snakemake workflow plans its jobs from it, the mixing stage and the trainer
read the sources' rules from it, the report and the plots read run ids and metrics from it. It imports
no torch (the workflow imports it at planning time); see docs/design.md, "The study model".
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

from kdlm.data.templates import check_template
from kdlm.decoding import GenerateConfig
from kdlm.evaluation.judge import JudgeConfig
from kdlm.evaluation.lmeval import HarnessConfig
from kdlm.lab.corpus import CorpusConfig
from kdlm.lab.models import LabModelConfig
from kdlm.lab.tokenizer import TokenizerSettings
from kdlm.methods import validate_hparams
from kdlm.sections import build
from kdlm.training.config import TrainConfig

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


EVAL_METRICS: tuple[Metric, ...] = (
    Metric("rouge_l", "rouge_l"),
    Metric("exact_match", "exact_match"),
    Metric("response_tokens", "n_response_tokens", digits=1),
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


@dataclass
class MixSettings:
    """The `mix` section: the mixes' on-policy share and draw, and extra sources `snakemake mixes` builds."""

    ratio: float = 0.5
    seed: int = 0
    sources: list[str] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.sources = list(self.sources or [])


def sections(config: dict) -> dict[str, Any]:
    """Every config section as its dataclass, keyed by its dotted config key (ValueError on the first bad
    one). Disabled optional evaluations are left out; `enabled` is the workflow's, not the verb's."""
    lab = config.get("lab") or {}
    evaluation = config["evaluation"]
    typed = {
        "threads": (Threads, config.get("threads")),
        "mix": (MixSettings, config.get("mix")),
        "teacher_training": (TrainConfig, config.get("teacher_training")),
        "training": (TrainConfig, config.get("training")),
        "teacher_generation": (GenerateConfig, config.get("teacher_generation")),
        "evaluation.generation": (GenerateConfig, evaluation.get("generation")),
        "lab.corpus": (CorpusConfig, lab.get("corpus")),
        "lab.tokenizer": (TokenizerSettings, lab.get("tokenizer")),
    }
    typed.update({f"lab.models.{name}": (LabModelConfig, spec) for name, spec in (lab.get("models") or {}).items()})
    for key, cls in (("judge", JudgeConfig), ("lm_eval", HarnessConfig)):
        values = dict(evaluation.get(key) or {})
        if values.pop("enabled", False):
            typed[f"evaluation.{key}"] = (cls, values)
    built, problems = {}, []
    for key, (cls, values) in typed.items():
        try:
            built[key] = build(cls, values, key)
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise ValueError("\n  ".join(problems))
    return built


# -------------------------------------------------------------------------------------- the study


class Study:
    """The run matrix and every file list of one (schema-valid) config."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.spec = config["study"]
        typed = sections(config)
        self.threads: Threads = typed["threads"]
        self.mix: MixSettings = typed["mix"]
        self.teacher_generation: GenerateConfig = typed["teacher_generation"]
        self.lab_models = dict(config["lab"].get("models", {})) if config["lab"]["enabled"] else {}
        self.template = config["prompt_template"]
        self.train_dataset = config["train_split"]["dataset"]
        self.train_split = config["train_split"]["split"]
        evaluation = config["evaluation"]
        self.judge = dict(evaluation.get("judge") or {})
        self.judge_enabled = bool(self.judge.pop("enabled", False))
        self.lm_eval = dict(evaluation.get("lm_eval") or {})
        self.lm_eval_enabled = bool(self.lm_eval.pop("enabled", False))

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


# ------------------------------------------------------------------------------------- the checks


def check_config(config: dict) -> list[str]:
    """Every problem of a schema-valid config that the schema cannot see, one line each naming the key:
    names used but not defined, unknown sources, splits, losses and hyperparameters, section values."""
    problems: list[str] = []
    spec = config["study"]
    lists = {"methods": "methods", "tasks": "evaluation.tasks"}
    if "pairs" not in spec:
        lists.update(students="students", teachers="teachers")
    named = [(f"study.{key}", spec.get(key, []), where) for key, where in lists.items()]
    named += [(f"study.grids.{i}.methods", g["methods"], "methods") for i, g in enumerate(spec.get("grids", []))]
    for key, names, where in named:
        defined = config["evaluation"]["tasks"] if where == "evaluation.tasks" else config[where]
        problems += [f"{key}: unknown name {n!r}; allowed (defined under '{where}'): {sorted(defined)}"
                     for n in names if n not in defined]  # fmt: skip
    listed = [("study.sources", spec["sources"]), ("mix.sources", (config.get("mix") or {}).get("sources", []))]
    listed += [(f"study.grids.{i}.sources", g["sources"]) for i, g in enumerate(spec.get("grids", []))]
    problems += [f"{key}: unknown source {s!r}; allowed: {list(SOURCES)}"
                 for key, names in listed for s in names if s not in SOURCES]  # fmt: skip
    seen: dict[tuple[str, str], int] = {}
    for i, pair in enumerate(spec.get("pairs", [])):
        for role, key in (("student", "students"), ("teacher", "teachers")):
            if pair[role] not in config[key]:
                problems.append(f"study.pairs.{i}.{role}: unknown name {pair[role]!r}; allowed (defined under "
                                f"'{key}'): {sorted(config[key])}")  # fmt: skip
        first = seen.setdefault((pair["student"], pair["teacher"]), i)
        if first != i:
            problems.append(f"study.pairs.{i}: the same pair as study.pairs.{first}")
    if NO_TEACHER in config["teachers"]:
        problems.append(f"teachers.{NO_TEACHER}: reserved name (runs without a teacher)")
    refs = [("train_split", config["train_split"])]
    refs += [(f"evaluation.tasks.{task}", ref) for task, ref in config["evaluation"]["tasks"].items()]
    for key, ref in refs:
        datasets = config["datasets"]
        if ref["dataset"] not in datasets:
            problems.append(f"{key}.dataset: unknown dataset {ref['dataset']!r}; allowed: {sorted(datasets)}")
        elif ref["split"] not in datasets[ref["dataset"]]["splits"]:
            splits = sorted(datasets[ref["dataset"]]["splits"])
            problems.append(f"{key}.split: unknown split {ref['split']!r} of {ref['dataset']!r}; allowed: {splits}")
    for name, method in config["methods"].items():
        try:
            validate_hparams(method["loss"], {k: v for k, v in method.items() if k != "loss"})
        except ValueError as err:
            problems.append(f"methods.{name}: {err}")
    try:
        check_template(config["prompt_template"])
    except ValueError as err:
        problems.append(f"prompt_template: {err}")
    try:
        sections(config)
    except ValueError as err:
        problems.append(str(err))
    return problems
