"""Generation and training lengths against each model's context, at planning time.

A setting that cannot fit (no room left for a prompt) would fail every job that uses it only once the
job runs, possibly after hours in a cluster queue; the workflow stops on it before anything is
submitted, naming the setting, the job and the model. A training `max_length` longer than a model's
context is capped to it by `kdlm distill`/`kdlm sft` (a note here, since nothing fails).
Torch-free; contexts come from the lab's settings, local config.json files or the known hub models
(:mod:`kdlm.model_refs`); a model whose context cannot be known offline is not checked here (its verb
checks once the config is loaded).
"""

from __future__ import annotations

from kdlm.decoding import GenerateConfig
from kdlm.lab.spec import LabModelConfig
from kdlm.model_refs import generation_room, read_context
from kdlm.sections import build
from kdlm.study import SOURCES, Study
from kdlm.training.config import TrainConfig, onpolicy_room

LAB_MODELS_DIR = "results/lab/models/"


def lab_model_spec(config: dict, path: str) -> LabModelConfig | None:
    """The settings of the lab model the workflow builds at `path` (so no file exists yet), or None when
    `path` is not one of the enabled lab's models."""
    lab = config.get("lab") or {}
    if not (lab.get("enabled") and path.startswith(LAB_MODELS_DIR)):
        return None
    name = path[len(LAB_MODELS_DIR) :].strip("/")
    spec = (lab.get("models") or {}).get(name)
    return build(LabModelConfig, spec, f"lab.models.{name}") if spec is not None else None


def model_context(config: dict, path: str) -> int | None:
    """The context of the model at `path`: a lab model's from its settings, otherwise from its config.json
    or the known hub models."""
    spec = lab_model_spec(config, path)
    return spec.max_position_embeddings if spec is not None else read_context(path)


def check_lengths(config: dict) -> tuple[list[str], list[str]]:
    """(problems, notes) of a valid config's lengths: problems stop the workflow, notes are logged."""
    study = Study(config)
    teachers = {t: model_context(config, config["teachers"][t]["path"]) for t in study.teachers()}
    students = {s: model_context(config, config["students"][s]["path"]) for s in study.students()}
    problems: list[str] = []
    notes: list[str] = []

    def room(setting: str, max_new_tokens: int, job: str, role: str, contexts: dict[str, int | None]) -> None:
        for name, context in contexts.items():
            if generation_room(context, max_new_tokens):
                path = config[f"{role}s"][name]["path"]
                problems.append(f"{setting}={max_new_tokens} leaves no room for a prompt in the {context}-token "
                                f"context of {role} {name!r} ({path}), in its {job} jobs; allowed: < {context}")  # fmt: skip

    sources = [*study.sources(), *study.mix.sources]
    if any(SOURCES[s].needs_teacher_answers for s in sources):
        room("teacher_generation.max_new_tokens", study.teacher_generation.max_new_tokens, "generate", "teacher", teachers)
    evaluation = build(GenerateConfig, config["evaluation"].get("generation"), "evaluation.generation")
    room("evaluation.generation.max_new_tokens", evaluation.max_new_tokens, "evaluate", "teacher", teachers)
    room("evaluation.generation.max_new_tokens", evaluation.max_new_tokens, "evaluate", "student", students)

    training = build(TrainConfig, config.get("training"), "training")
    for student, teacher in study.pairs():
        known = [c for c in (students[student], teachers[teacher]) if c is not None]
        if known and training.max_length > min(known):
            notes.append(f"training.max_length={training.max_length} is capped to {min(known)} tokens, the context "
                         f"of student {student!r} / teacher {teacher!r}")  # fmt: skip
        capped = training.capped(min(known)) if known else training
        if any(SOURCES[s].generates_during_training for s in study.sources()):
            new = capped.onpolicy.max_new_tokens
            problem = onpolicy_room(new, capped.max_length)
            if problem:
                problems.append(f"training.{problem} (student {student!r}, in its on-policy distill jobs)")
            room("training.onpolicy.max_new_tokens", new, "on-policy distill", "student", {student: students[student]})
    teacher_training = build(TrainConfig, config.get("teacher_training"), "teacher_training")
    for teacher, context in teachers.items():
        if config["teachers"][teacher].get("finetune") and context and teacher_training.max_length > context:
            notes.append(f"teacher_training.max_length={teacher_training.max_length} is capped to {context} tokens, "
                         f"the context of teacher {teacher!r}")  # fmt: skip
    return list(dict.fromkeys(problems)), list(dict.fromkeys(notes))
