# Config validation, wildcard constraints and every input function of the workflow.
import glob
import itertools
import json
import os
import re
import shlex
import sys

from snakemake.utils import validate

# Rules call `kdlm`: use the one installed beside the Python that runs Snakemake, activated or not.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


def _explain_schema_errors(schema_path):
    """Every schema violation as one line naming the dotted config key, before Snakemake's own report."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(open(schema_path))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for error in errors:
            key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
            lines.append(f"{key}: {error.message}")
        raise ValueError("invalid configuration:\n  " + "\n  ".join(lines))


_explain_schema_errors(workflow.source_path("../schemas/config.schema.yaml"))
validate(config, schema="../schemas/config.schema.yaml")


def _check_names():
    """Cross-references the JSON schema cannot express; fail before any job with the allowed values."""
    problems = []
    study = config["study"]
    # study list -> where its names are defined; with `pairs`, `students` and `teachers` are ignored
    # (a layered config inherits them from config.yaml)
    lists = {"methods": "methods", "tasks": "evaluation.tasks"}
    if "pairs" not in study:
        lists.update(students="students", teachers="teachers")
    named = [(f"study.{key}", study.get(key, []), where) for key, where in lists.items()]
    named += [(f"study.grids.{i}.methods", grid["methods"], "methods") for i, grid in enumerate(study.get("grids", []))]
    for key, names, where in named:
        defined = config["evaluation"]["tasks"] if where == "evaluation.tasks" else config[where]
        for name in names:
            if name not in defined:
                problems.append(
                    f"{key}: unknown name {name!r}; allowed (defined under '{where}'): {sorted(defined)}"
                )
    seen = {}
    for i, pair in enumerate(study.get("pairs", [])):
        for role, key in (("student", "students"), ("teacher", "teachers")):
            if pair[role] not in config[key]:
                problems.append(
                    f"study.pairs.{i}.{role}: unknown name {pair[role]!r}; allowed (defined under '{key}'): "
                    f"{sorted(config[key])}"
                )
        first = seen.setdefault((pair["student"], pair["teacher"]), i)
        if first != i:
            problems.append(f"study.pairs.{i}: the same pair as study.pairs.{first}")
    refs = [("train_split", config["train_split"])] + [
        (f"evaluation.tasks.{task}", ref) for task, ref in config["evaluation"]["tasks"].items()
    ]
    for key, ref in refs:
        if ref["dataset"] not in config["datasets"]:
            problems.append(f"{key}.dataset: unknown dataset {ref['dataset']!r}; allowed: {sorted(config['datasets'])}")
        elif ref["split"] not in config["datasets"][ref["dataset"]]["splits"]:
            splits = sorted(config["datasets"][ref["dataset"]]["splits"])
            problems.append(f"{key}.split: unknown split {ref['split']!r} of {ref['dataset']!r}; allowed: {splits}")
    from kdlm.losses import validate_hparams

    for name, method in config["methods"].items():
        hparams = {k: v for k, v in method.items() if k != "loss"}
        try:
            validate_hparams(method["loss"], hparams)
        except ValueError as err:
            problems.append(f"methods.{name}: {err}")
    if problems:
        raise ValueError("invalid configuration:\n  " + "\n  ".join(problems))


_check_names()


def _check_data_config():
    """Data-stage settings the schema cannot check: the prompt template exists (built in or fschat)."""
    from kdlm.data.templates import check_template

    try:
        check_template(config["prompt_template"])
    except ValueError as err:
        raise ValueError(f"invalid configuration:\n  prompt_template: {err}") from None


_check_data_config()
MIX = {"ratio": 0.5, "seed": 0, "sources": [], **config.get("mix", {})}
TEACHER_GENERATION = {"shards": 1, "shard_size": 256, "overlong": "truncate", "backend": "hf",
                      **config["teacher_generation"]}  # fmt: skip

LAB_MODELS = config["lab"].get("models", {}) if config["lab"]["enabled"] else {}
TEMPLATE = config["prompt_template"]
TRAIN_DATASET = config["train_split"]["dataset"]
TRAIN_SPLIT = config["train_split"]["split"]


def _visible_gpus():
    """CUDA devices this machine gives its jobs, counted without importing torch: CUDA_VISIBLE_DEVICES
    when set, else the /dev/nvidia<N> device files."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")])
    return len(glob.glob("/dev/nvidia[0-9]*"))


# The `gpu` resource of every job that can use one (teacher fine-tuning, generation, distillation,
# evaluation, harness): 1 where this machine has a GPU, so that a global `--resources gpu=N` (the
# default profile sets 1) caps how many run at once; 0 on a CPU-only machine, where they must not
# queue on a GPU that is not there. Cluster profiles set it per rule (`set-resources`).
GPU_PER_JOB = 1 if _visible_gpus() else 0


def _alternatives(names):
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


wildcard_constraints:
    dataset=_alternatives(config["datasets"]),
    split=_alternatives({s for d in config["datasets"].values() for s in d["splits"]}),
    lab_model=_alternatives(LAB_MODELS) if LAB_MODELS else "$^",
    teacher=_alternatives(list(config["teachers"]) + ["none"]),
    student=_alternatives(config["students"]),
    source=_alternatives(
        set(config["study"]["sources"]) | {s for g in config["study"].get("grids", []) for s in g["sources"]}
        | set(MIX["sources"])
    ),
    shard=r"\d+",
    method=_alternatives(config["methods"]),
    seed=r"\d+",
    task=_alternatives(config["evaluation"]["tasks"]),
    model=r"(teacher|base)/[^/]+|[^/]+__[^/]+/[^/]+/[^/]+/seed\d+",


def study_pairs():
    """(student, teacher) of every distilled pair: `study.pairs` when given, else students × teachers."""
    study = config["study"]
    if "pairs" in study:
        return [(pair["student"], pair["teacher"]) for pair in study["pairs"]]
    return [(student, teacher) for student in study["students"] for teacher in study["teachers"]]


def study_students():
    """Every student of some pair, once, in order (each is also evaluated untrained)."""
    return list(dict.fromkeys(student for student, _ in study_pairs()))


def study_teachers():
    """Every teacher of some pair, once, in order (each is fine-tuned if asked, generates, is evaluated)."""
    return list(dict.fromkeys(teacher for _, teacher in study_pairs()))


def study_tasks():
    """The evaluation tasks of the study: `study.tasks` when given, else every `evaluation.tasks` entry."""
    return config["study"].get("tasks", list(config["evaluation"]["tasks"]))


def study_grids():
    """(sources, methods) blocks of the run matrix: `study.sources` × `study.methods`, then each of
    `study.grids` (further blocks, e.g. two methods on every on-policy source)."""
    study = config["study"]
    return [(study["sources"], study["methods"])] + [(g["sources"], g["methods"]) for g in study.get("grids", [])]


def study_sources():
    """Every source some run trains on, once, in order."""
    return list(dict.fromkeys(source for sources, _ in study_grids() for source in sources))


def runs():
    """Every trained student of the study; `sft` on `gt` needs no teacher, so it runs once as `none`."""
    seen, result = set(), []
    for student, teacher in study_pairs():
        for sources, methods in study_grids():
            for source, method, seed in itertools.product(sources, methods, config["study"]["seeds"]):
                needs_teacher = not (config["methods"][method]["loss"] == "sft" and source == "gt")
                run = f"{student}__{teacher if needs_teacher else 'none'}/{source}/{method}/seed{seed}"
                if run not in seen:
                    seen.add(run)
                    result.append(run)
    return result


def model_input(path):
    """A model path as a Snakemake input: its config.json when this workflow makes it or it is a
    local directory; nothing for a hub id (loaded by name at run time)."""
    if path.startswith("results/") or Path(path).is_dir():
        return [f"{path}/config.json"]
    return []


def teacher_dir(teacher):
    spec = config["teachers"][teacher]
    return f"results/models/teachers/{teacher}" if spec.get("finetune", False) else spec["path"]


def records_path(dataset, split):
    return f"results/data/{dataset}/{split}.parquet"


def train_records():
    return records_path(TRAIN_DATASET, TRAIN_SPLIT)


def dataset_split(dataset, split):
    """`{path, split, name}` of one split: a config string is the path (a file, or for format `hf` a
    hub id or directory whose HF split has the same name as ours)."""
    spec = config["datasets"][dataset]["splits"][split]
    spec = {"path": spec} if isinstance(spec, str) else dict(spec)
    if config["datasets"][dataset]["format"] == "hf":
        spec.setdefault("split", split)
    return spec


def get_dataset_file(wildcards):
    """The data file (or `hf` directory) as a Snakemake input when this workflow makes it or it exists;
    nothing for a hub id or a file not there yet, so that `snakemake -n` plans a study before its data
    arrive (startup notes such files; the prepare job stops naming the file while it is still missing)."""
    path = dataset_split(wildcards.dataset, wildcards.split)["path"]
    return [path] if path.startswith("results/") or Path(path).exists() else []


def _note_missing_inputs():
    """One stderr line per data file or local model directory of the study that is not there (yet)."""
    refs = [("train_split", config["train_split"])] + [
        (f"evaluation.tasks.{task}", config["evaluation"]["tasks"][task]) for task in study_tasks()
    ]
    notes = []
    for key, ref in refs:
        ds = config["datasets"][ref["dataset"]]
        path = dataset_split(ref["dataset"], ref["split"])["path"]
        if not path.startswith("results/") and not Path(path).exists() and ds["format"] != "hf":
            notes.append(f"{key}: data file {path} does not exist yet; its prepare job fails until it does")
    models = [(f"students.{s}", config["students"][s]["path"]) for s in study_students()]
    models += [(f"teachers.{t}", config["teachers"][t]["path"]) for t in study_teachers()]
    for key, path in models:
        if path.startswith(("/", ".")) and not Path(path).is_dir():
            notes.append(f"{key}.path: {path} is not a directory here; jobs that load it fail until it is")
    for note in dict.fromkeys(notes):
        print(f"kdlm: note: {note}", file=sys.stderr)


def prepare_args(wildcards):
    """`kdlm prepare` options of one split besides --input/--out."""
    ds = config["datasets"][wildcards.dataset]
    spec = dataset_split(wildcards.dataset, wildcards.split)
    args = [
        f"--input {shlex.quote(spec['path'])}",
        f"--format {ds['format']}",
        f"--fields {json_arg(ds.get('fields', {}))}",
        f"--on-bad-record {ds.get('on_bad_record', 'error')}",
    ]
    if "split" in spec:
        args.append(f"--hf-split {shlex.quote(spec['split'])}")
    if "name" in spec:
        args.append(f"--hf-name {shlex.quote(spec['name'])}")
    return " ".join(args)


def get_teacher_base(wildcards):
    return model_input(config["teachers"][wildcards.teacher]["path"])


def get_teacher_model(wildcards):
    return model_input(teacher_dir(wildcards.teacher))


def get_mix_inputs(wildcards):
    from kdlm.data.mixing import NEEDS_TEACHER

    inputs = {"records": records_path(wildcards.dataset, TRAIN_SPLIT)}
    if wildcards.source in NEEDS_TEACHER:
        if wildcards.teacher == "none":
            raise ValueError(f"source {wildcards.source!r} needs a teacher's responses; got teacher 'none'")
        inputs["generated"] = f"results/generated/{wildcards.dataset}/{wildcards.teacher}.parquet"
    return inputs


def mixed_files():
    """Every mixed-data file of the study's teachers and sources plus `mix.sources`; `gt` needs no teacher."""
    from kdlm.data.mixing import NEEDS_TEACHER

    sources = list(dict.fromkeys(study_sources() + MIX["sources"]))
    files = {
        f"results/mixed/{TRAIN_DATASET}/{teacher if source in NEEDS_TEACHER else 'none'}/{source}.parquet"
        for teacher in study_teachers()
        for source in sources
    }
    return sorted(files)


def get_generate_shard_markers(wildcards):
    n = TEACHER_GENERATION["shards"]
    return [f"results/generated/{wildcards.dataset}/{wildcards.teacher}.shards/job{i}-of-{n}.json" for i in range(n)]


def get_distill_inputs(wildcards):
    """The run's mixed file (teacher-independent `none` mix unless the source holds teacher answers) and models."""
    from kdlm.data.mixing import NEEDS_TEACHER

    teacher = None if wildcards.teacher == "none" else wildcards.teacher
    loss = config["methods"][wildcards.method]["loss"]
    if teacher is None and (loss != "sft" or wildcards.source == "mix_token"):
        raise ValueError(f"method {wildcards.method!r} on source {wildcards.source!r} needs a teacher")
    mix_teacher = teacher if wildcards.source in NEEDS_TEACHER else "none"
    inputs = {
        "data": f"results/mixed/{TRAIN_DATASET}/{mix_teacher}/{wildcards.source}.parquet",
        "student": model_input(config["students"][wildcards.student]["path"]),
    }
    if teacher is not None:
        inputs["teacher"] = model_input(teacher_dir(teacher))
    return inputs


def json_arg(value):
    """A value as a shell-quoted JSON argument for a `kdlm` option."""
    return "'" + json.dumps(value, sort_keys=True).replace("'", "'\\''") + "'"


def generation_args(settings):
    """`kdlm generate/evaluate` decoding options from a generation config mapping."""
    args = [
        f"--max-new-tokens {settings.get('max_new_tokens', 256)}",
        f"--batch-size {settings.get('batch_size', 32)}",
        f"--temperature {settings.get('temperature', 1.0)}",
        f"--top-p {settings.get('top_p', 1.0)}",
        f"--seed {settings.get('seed', 0)}",
    ]
    if settings.get("sample", False):
        args.append("--sample")
    return " ".join(args)


def teacher_generation_args():
    """`kdlm generate` options from `teacher_generation`: decoding plus shards, overlong policy, backend."""
    settings = TEACHER_GENERATION
    args = [
        generation_args(settings),
        f"--shard-size {settings['shard_size']}",
        f"--overlong {settings['overlong']}",
        f"--backend {settings['backend']}",
    ]
    if settings.get("max_prompt_tokens"):
        args.append(f"--max-prompt-tokens {settings['max_prompt_tokens']}")
    return " ".join(args)


def parse_eval_model(model):
    """(model directory, description) of an evaluation target name.

    Names: `teacher/<teacher>`, `base/<student>` (untrained), or a run id.
    """
    kind, _, name = model.partition("/")
    empty = {"student": "", "teacher": "", "source": "", "method": "", "seed": 0}
    if kind == "teacher":
        return teacher_dir(name), {**empty, "kind": "teacher", "model": model, "teacher": name}
    if kind == "base":
        return config["students"][name]["path"], {**empty, "kind": "base", "model": model, "student": name}
    match = re.fullmatch(r"(?P<student>[^/]+)__(?P<teacher>[^/]+)/(?P<source>[^/]+)/(?P<method>[^/]+)/seed(?P<seed>\d+)", model)
    if not match:
        raise ValueError(f"not an evaluation target: {model!r}")
    fields = match.groupdict()
    return f"results/runs/{model}", {"kind": "run", "model": model, **fields, "seed": int(fields["seed"])}


def eval_models():
    """Every teacher and untrained student of the study's pairs, each once, and every run."""
    return [f"teacher/{t}" for t in study_teachers()] + [f"base/{s}" for s in study_students()] + runs()


def eval_files():
    return [f"results/eval/{m}/{task}.parquet" for m in eval_models() for task in study_tasks()]


def get_eval_model(wildcards):
    return model_input(parse_eval_model(wildcards.model)[0])


def get_eval_records(wildcards):
    ref = config["evaluation"]["tasks"][wildcards.task]
    return records_path(ref["dataset"], ref["split"])


JUDGE = {"enabled": False, "api_key_env": "OPENAI_API_KEY", "concurrency": 4, "max_retries": 5, "timeout": 120,
         "backoff": 1.0, "both_orders": True, **config["evaluation"].get("judge", {})}  # fmt: skip
# the summary's metrics, each plotted as results/plots/scores_<metric>.png (kdlm.plots)
REPORT_METRICS = ["rouge_l", "exact_match", "response_tokens"] + (["judge"] if JUDGE["enabled"] else [])


LM_EVAL = {"enabled": False, "tasks": ["mmlu", "bbh", "drop"], "batch_size": 8, "device": "cpu",
           **config["evaluation"].get("lm_eval", {})}  # fmt: skip
if LM_EVAL["enabled"]:
    REPORT_METRICS.append("harness")


def harness_files():
    """Every `kdlm harness` output when `evaluation.lm_eval.enabled`, else none."""
    return [f"results/harness/{m}.parquet" for m in eval_models()] if LM_EVAL["enabled"] else []


def harness_args():
    """`kdlm harness` options from `evaluation.lm_eval`; unavailable data mark cells missing, not fail."""
    args = [f"--tasks {' '.join(shlex.quote(t) for t in LM_EVAL['tasks'])}", f"--batch-size {LM_EVAL['batch_size']}",
            f"--device {shlex.quote(LM_EVAL['device'])}", "--on-error missing"]  # fmt: skip
    for key in ("num_fewshot", "limit"):
        if LM_EVAL.get(key) is not None:
            args.append(f"--{key.replace('_', '-')} {LM_EVAL[key]}")
    return " ".join(args)


def judge_files():
    """Every `kdlm judge` output when `evaluation.judge.enabled`, else none."""
    if not JUDGE["enabled"]:
        return []
    return [f"results/judge/{m}/{task}.parquet" for m in eval_models() for task in study_tasks()]


def judge_args():
    """`kdlm judge` options from `evaluation.judge` (the key's variable name only, never the key)."""
    args = [
        f"--base-url {shlex.quote(JUDGE['base_url'])}",
        f"--model {shlex.quote(JUDGE['model'])}",
        f"--api-key-env {shlex.quote(JUDGE['api_key_env'])}",
        f"--concurrency {JUDGE['concurrency']}",
        f"--max-retries {JUDGE['max_retries']}",
        f"--timeout {JUDGE['timeout']}",
        f"--backoff {JUDGE['backoff']}",
    ]
    if not JUDGE["both_orders"]:
        args.append("--one-order")
    return " ".join(args)


def train_logs():
    """Every run's training log, for the report's loss and ATKD plots."""
    return [f"results/runs/{run}/train_log.parquet" for run in runs()]


def report_baseline_method():
    """The method Δ is taken against: the first study method whose loss is forward KL ('' if none)."""
    forward = [m for m in config["study"]["methods"] if config["methods"][m]["loss"] == "forward"]
    return forward[0] if forward else ""


def get_final_output():
    return ["results/tables/summary.parquet", "results/tables/summary.csv", "results/tables/summary.md"]


_note_missing_inputs()
