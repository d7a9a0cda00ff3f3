# Config validation, wildcard constraints and the input functions of the workflow. What the study
# trains and evaluates comes from kdlm.study (docs/design.md, section The study model); the default of
# every setting lives in its dataclass, so rules pass the config sections of the user as JSON. Every
# rule runs kdlm (CONDA_ENV for --sdm conda).
import json
import os
import re
import shlex
import sys
from pathlib import Path

from kdlm.config_checks import validate_config
from kdlm.job_plan import MAX_GPUS, declared_gpus, plan_study
from kdlm.runtime import prefer_this_kdlm, visible_gpus
from kdlm.sections import build
from kdlm.study import NO_TEACHER, RUN_ID_REGEX, SOURCES, Study
from kdlm.teacher_cache.config import TeacherSignalConfig

prefer_this_kdlm()  # rules call the `kdlm` installed beside the Python that runs Snakemake


try:  # a config problem is a message naming the key, not a traceback (exit status 2, as kdlm's verbs)
    for note in validate_config(config, workflow.source_path("../schemas/config.schema.yaml")):
        print(f"kdlm: note: {note}", file=sys.stderr)
except ValueError as err:
    print(f"kdlm: {err}", file=sys.stderr)
    sys.exit(2)
CONDA_ENV = "../envs/kdlm.yaml"
STUDY = Study(config)
TEMPLATE = STUDY.template
TRAIN_DATASET = STUDY.train_dataset
TRAIN_SPLIT = STUDY.train_split
TEACHER_SIGNAL = build(TeacherSignalConfig, config.get("teacher_signal"), "teacher_signal")


# The `gpu` resource of every job that can use one: 1 where this machine has a GPU, so that a global
# `--resources gpu=N` (the default profile sets 1) caps how many run at once; 0 on a CPU-only machine.
# Cluster profiles set it per rule (`set-resources`).
GPU_PER_JOB = 1 if visible_gpus() else 0

# Where the profile declares the cluster's GPUs (`gpu_memory_gb`, optionally `max_gpus`, under
# set-resources of teacher_sft and distill, as profiles/slurm does), each training job's GPUs, strategy
# and teacher placement come from the memory plan (kdlm.job_plan); a job that fits nowhere stops here,
# before anything is submitted. Elsewhere training jobs take GPU_PER_JOB and the section as written.
PLAN = None
try:
    DECLARED_GPUS = declared_gpus(workflow.resource_settings.overwrite_resources)
    if "gpu_memory_gb" in DECLARED_GPUS:
        PLAN = plan_study(config, DECLARED_GPUS["gpu_memory_gb"], DECLARED_GPUS.get("max_gpus", MAX_GPUS))
except (ValueError, OSError) as err:
    print(f"kdlm: invalid configuration: the memory plan: {err}", file=sys.stderr)
    sys.exit(2)
if PLAN is not None:
    if PLAN.problems:
        print(
            f"kdlm: invalid configuration: training jobs that fit on no {PLAN.gpu_memory_gb:g} GB GPU:",
            file=sys.stderr,
        )
        for problem in PLAN.problems:
            print(f"  {problem}", file=sys.stderr)
        sys.exit(2)


def _placement(rule, student, teacher):
    return PLAN.placement(rule, student, teacher) if PLAN is not None else None


def training_gpus(rule, student, teacher):
    """The `gpu` resource of a training job: the plan's GPU count, else GPU_PER_JOB."""
    placement = _placement(rule, student, teacher)
    return placement.gpus if placement is not None else GPU_PER_JOB


def distributed_arg(rule, student, teacher):
    """A training job's `--distributed` JSON: the plan's strategy and teacher placement, else the section."""
    placement = _placement(rule, student, teacher)
    section = config.get("distributed") or {}
    return json_arg(placement.distributed(section) if placement is not None else section)


def torchrun_launcher(gpus):
    """`kdlm`, or one process per GPU under torchrun when a job has several."""
    if int(gpus) > 1:
        return f"torchrun --standalone --nproc-per-node={gpus} --no-python kdlm"
    return "kdlm"


def distill_job_teacher(wildcards):
    """The teacher a distill job loads (`none` when it loads none), as the plan keys it."""
    if SOURCES[wildcards.source].needs_live_teacher(STUDY.loss(wildcards.method)):
        return wildcards.teacher
    return NO_TEACHER


def _alternatives(names):
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


wildcard_constraints:
    dataset=_alternatives(config["datasets"]),
    split=_alternatives({s for d in config["datasets"].values() for s in d["splits"]}),
    lab_model=_alternatives(STUDY.lab_models) if STUDY.lab_models else "$^",
    teacher=_alternatives([*config["teachers"], NO_TEACHER]),
    student=_alternatives(config["students"]),
    source=_alternatives(SOURCES),
    shard=r"\d+",
    method=_alternatives(config["methods"]),
    seed=r"\d+",
    task=_alternatives(config["evaluation"]["tasks"]),
    model=f"(teacher|base)/[^/]+|{RUN_ID_REGEX}",


def json_arg(value):
    """A value as a shell-quoted JSON argument for a `kdlm` option."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def model_input(path):
    """A model path as a Snakemake input: its config.json when this workflow makes it or it is a
    local directory; nothing for a hub id (loaded by name at run time)."""
    if path.startswith("results/") or Path(path).is_dir():
        return [f"{path}/config.json"]
    return []


def records_path(dataset, split):
    return f"results/data/{dataset}/{split}.parquet"


def train_records():
    return records_path(TRAIN_DATASET, TRAIN_SPLIT)


def get_dataset_file(wildcards):
    """The data file as an input when this workflow makes it or it exists; nothing for a hub id or a file
    not there yet, so that `snakemake -n` plans a study before its data arrive."""
    path = STUDY.dataset_split(wildcards.dataset, wildcards.split)["path"]
    return [path] if path.startswith("results/") or Path(path).exists() else []


def prepare_spec(wildcards):
    """`kdlm prepare --spec`: the data set's format options and this split's HF split and name."""
    ds = {k: v for k, v in config["datasets"][wildcards.dataset].items() if k != "splits"}
    spec = STUDY.dataset_split(wildcards.dataset, wildcards.split)
    hf = {f"hf_{k}": spec[k] for k in ("split", "name") if k in spec}
    return json_arg({**ds, **hf})


def get_teacher_base(wildcards):
    return model_input(config["teachers"][wildcards.teacher]["path"])


def get_teacher_model(wildcards):
    return model_input(STUDY.teacher_dir(wildcards.teacher))


def mixed_file(teacher, source):
    return f"results/mixed/{TRAIN_DATASET}/{STUDY.mix_teacher(teacher, source)}/{source}.parquet"


def get_mix_inputs(wildcards):
    inputs = {"records": records_path(wildcards.dataset, TRAIN_SPLIT)}
    if SOURCES[wildcards.source].needs_teacher_answers:
        if wildcards.teacher == NO_TEACHER:
            raise ValueError(f"source {wildcards.source!r} needs a teacher's responses; got teacher 'none'")
        inputs["generated"] = f"results/generated/{wildcards.dataset}/{wildcards.teacher}.parquet"
    return inputs


def mixed_files():
    """Every training file of the study's teachers and sources plus `mix.sources`."""
    sources = dict.fromkeys(STUDY.sources() + STUDY.mix.sources)
    return sorted({mixed_file(teacher, source) for teacher in STUDY.teachers() for source in sources})


def get_generate_shard_markers(wildcards):
    n = STUDY.teacher_generation.shards
    return [
        f"results/generated/{wildcards.dataset}/{wildcards.teacher}.shards/job{i}-of-{n}.json"
        for i in range(n)
    ]


def get_distill_inputs(wildcards):
    """The run's training file and models; a teacher only where the run needs one (kdlm.study)."""
    needs = SOURCES[wildcards.source].needs_teacher(STUDY.loss(wildcards.method))
    if needs == (wildcards.teacher == NO_TEACHER):
        wanted = "a teacher" if needs else f"teacher {NO_TEACHER!r}"
        raise ValueError(f"method {wildcards.method!r} on source {wildcards.source!r} runs with {wanted}")
    inputs = {
        "data": mixed_file(wildcards.teacher, wildcards.source),
        "student": model_input(config["students"][wildcards.student]["path"]),
    }
    if SOURCES[wildcards.source].needs_live_teacher(STUDY.loss(wildcards.method)):
        inputs["teacher"] = model_input(STUDY.teacher_dir(wildcards.teacher))
    if reads_teacher_signal(wildcards):
        inputs["teacher_signal"] = str(
            Path(teacher_signal_dir(wildcards.teacher, wildcards.source), "signal.json")
        )
    return inputs


def distill_teacher_arg(wildcards):
    """`--teacher <dir>` where the run loads its teacher, else nothing; `--teacher-signal <dir>` where it
    reads the cached teacher signal of its offline rows."""
    if not SOURCES[wildcards.source].needs_live_teacher(STUDY.loss(wildcards.method)):
        return ""
    arg = f"--teacher {shlex.quote(STUDY.teacher_dir(wildcards.teacher))}"
    if reads_teacher_signal(wildcards):
        arg += f" --teacher-signal {shlex.quote(teacher_signal_dir(wildcards.teacher, wildcards.source))}"
    return arg


def reads_teacher_signal(wildcards):
    """Whether a distill job reads a cached teacher signal (teacher_signal.cache and offline rows)."""
    return TEACHER_SIGNAL.cache and SOURCES[wildcards.source].reads_teacher_signal(
        STUDY.loss(wildcards.method)
    )


def teacher_signal_dir(teacher, source):
    """The cached teacher signal of `teacher` on the training file of `source`: one per (teacher, file),
    shared by every student, method and seed."""
    return f"results/teacher_signal/{TRAIN_DATASET}/{teacher}/{source}"


def teacher_signal_training(wildcards):
    """What of the training section shapes the cache: the sequences (max_length) and the teacher's dtype."""
    training = config.get("training") or {}
    keys = ("max_length", "bf16", "teacher_float32")
    return json_arg({**{k: training[k] for k in keys if k in training}, "threads": STUDY.threads.distill})


def eval_files():
    return [f"results/eval/{m}/{task}.parquet" for m in STUDY.eval_models() for task in STUDY.tasks()]


def get_eval_model(wildcards):
    return model_input(STUDY.eval_target(wildcards.model)[0])


def get_eval_records(wildcards):
    ref = config["evaluation"]["tasks"][wildcards.task]
    return records_path(ref["dataset"], ref["split"])


def harness_files():
    """Every `kdlm harness` output when `evaluation.lm_eval.enabled`, else none."""
    return [f"results/harness/{m}.parquet" for m in STUDY.eval_models()] if STUDY.lm_eval_enabled else []


def judge_files():
    """Every `kdlm judge` output when `evaluation.judge.enabled`, else none."""
    if not STUDY.judge_enabled:
        return []
    return [f"results/judge/{m}/{task}.parquet" for m in STUDY.eval_models() for task in STUDY.tasks()]


def train_logs():
    """Every run's training log, for the report's loss and ATKD plots."""
    return [f"results/runs/{run}/train_log.parquet" for run in STUDY.runs()]


for note in STUDY.missing_inputs():
    print(f"kdlm: note: {note}", file=sys.stderr)


# The claims report (rules/claims.smk): each teacher's uncertainty on the claims' training files.
def claims_sources():
    return list(STUDY.claims.get("sources", ["gt", "teacher"]))


def uncertainty_files():
    return [
        f"results/uncertainty/{TRAIN_DATASET}/{teacher}/{source}.parquet"
        for teacher in STUDY.teachers()
        for source in claims_sources()
    ]


def claims_outputs():
    return ["results/tables/claims.md", "results/plots/uncertainty.png"] if STUDY.claims_enabled else []
