"""The checks of a config that its JSON schema cannot express: names used but not defined, unknown
sources, splits, losses and hyperparameters, and every section's values, built through the dataclass
that holds its defaults and ranges. Torch-free: the workflow runs them at planning time."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

from kdlm.claims import ClaimsConfig
from kdlm.data.records import PrepareConfig
from kdlm.data.templates import check_template
from kdlm.decoding import GenerateConfig
from kdlm.evaluation.judge import JudgeConfig
from kdlm.evaluation.lmeval import HarnessConfig
from kdlm.lab.corpus import CorpusConfig
from kdlm.lab.pretraining import PretrainTextConfig
from kdlm.lab.spec import LabModelConfig, TokenizerSettings
from kdlm.length_checks import check_lengths
from kdlm.methods import validate_hparams
from kdlm.sections import build
from kdlm.study import NO_TEACHER, SOURCES, MixSettings, Threads
from kdlm.teacher_cache.config import TeacherSignalConfig
from kdlm.training.config import DistributedConfig, TrainConfig


def _sections(config: dict) -> list[tuple[str, type, dict]]:
    """(dotted key, dataclass, values) of every config section. Disabled optional evaluations are left out
    (`enabled` is the workflow's, not the verb's); a data set's format options are checked without a file."""
    lab = config.get("lab") or {}
    evaluation = config["evaluation"]
    typed = [
        ("threads", Threads, config.get("threads")),
        ("mix", MixSettings, config.get("mix")),
        ("teacher_training", TrainConfig, config.get("teacher_training")),
        ("training", TrainConfig, config.get("training")),
        ("distributed", DistributedConfig, config.get("distributed")),
        ("teacher_signal", TeacherSignalConfig, config.get("teacher_signal")),
        ("teacher_generation", GenerateConfig, config.get("teacher_generation")),
        ("evaluation.generation", GenerateConfig, evaluation.get("generation")),
        ("lab.corpus", CorpusConfig, lab.get("corpus")),
        ("lab.tokenizer", TokenizerSettings, lab.get("tokenizer")),
    ]
    typed += [(f"lab.models.{name}", LabModelConfig, spec) for name, spec in (lab.get("models") or {}).items()]
    pretraining = lab.get("pretraining") or {}
    if pretraining.get("enabled"):
        typed += [("lab.pretraining.text", PretrainTextConfig, pretraining.get("text")),
                  ("lab.pretraining.training", TrainConfig, pretraining.get("training"))]  # fmt: skip
        typed += [(f"lab.pretraining.models.{name}", TrainConfig, {**(pretraining.get("training") or {}), **values})
                  for name, values in (pretraining.get("models") or {}).items()]  # fmt: skip
    claims = dict(config.get("claims") or {})
    if claims.pop("enabled", False):
        typed.append(("claims", ClaimsConfig, claims))
    for key, cls in (("judge", JudgeConfig), ("lm_eval", HarnessConfig)):
        values = dict(evaluation.get(key) or {})
        if values.pop("enabled", False):
            typed.append((f"evaluation.{key}", cls, values))
    for name, ds in config["datasets"].items():
        options = {k: v for k, v in ds.items() if k != "splits"}
        typed.append((f"datasets.{name}", PrepareConfig, {**options, "input": "-", "out": "-", "dataset": name}))
    return typed


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
    problems += [f"study.seeds: {seed!r} is not a seed; seeds are integers >= 0"
                 for seed in spec["seeds"] if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0]  # fmt: skip
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
    for key, cls, values in _sections(config):
        try:
            build(cls, values, key)
        except ValueError as err:
            problems.append(str(err))
    return problems


def validate_config(config: dict, schema_path: str | Path) -> list[str]:
    """Stop with every problem of `config`, one line each naming its dotted key: the schema's structure
    and types first, then (for a config of the right shape) :func:`check_config`, then (for valid
    values) the lengths against the models' contexts. Returns the notes worth logging.

    Raises:
        ValueError: listing every problem of the first stage that has any.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    problems = [f"{'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors]
    problems = problems or check_config(config)
    notes: list[str] = []
    if not problems:
        problems, notes = check_lengths(config)
    if problems:
        raise ValueError("invalid configuration:\n  " + "\n  ".join(problems))
    return notes


def check_yaml_file(path: str | Path) -> object:
    """The file's YAML content; a syntax error is one error naming the file, line and column (Snakemake's
    own loader says only that the file is not valid), raised before Snakemake reads the file.

    Raises:
        ValueError: for a file that is not valid YAML.
    """
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ValueError(f"{path}: not valid YAML: {where}{err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None


def layer_config(base: dict, top: dict) -> dict:
    """Snakemake's merge of a `--configfile` over the config: mappings key by key, anything else replaced."""
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            layer_config(base[key], value)
        else:
            base[key] = value
    return base


def check_config_files(layers: list[Path], checkout: Path) -> tuple[dict, list[str]]:
    """The study config `snakemake --configfile <layers>` would use, checked as the workflow checks it:
    each file's YAML syntax (by line), then :func:`validate_config`. Returns (config, notes).

    Raises:
        ValueError: for the first file that is not valid YAML, or listing every problem of the config.
        FileNotFoundError: for a missing file, or a `checkout` without the workflow's config and schema.
    """
    default, schema = checkout / "config" / "config.yaml", checkout / "workflow" / "schemas" / "config.schema.yaml"
    for path in (default, schema):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; --checkout must be a kdlm checkout (its config/ and workflow/)")
    config: dict = {}
    for path in [default, *layers]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        loaded = check_yaml_file(path) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file must be a mapping of keys at its top level")
        layer_config(config, loaded)
    return config, validate_config(config, schema)
