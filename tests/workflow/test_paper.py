"""The paper's study (config/paper.yaml) and `study.pairs`: dry runs only, no job is executed."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "-n"]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
PAPER = REPO / "config" / "paper.yaml"
# a job as the dry run prints it: the rule, then its indented properties (input, wildcards, resources, ...)
JOB = re.compile(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", re.MULTILINE)


def _config(*layers: Path) -> dict:
    """config.yaml with `layers` on top, merged as Snakemake merges --configfile."""
    config: dict = {}
    for path in [REPO / "config" / "config.yaml", *layers]:
        update_config(config, yaml.safe_load(path.read_text()) or {})
    return config


def _expected_runs(config: dict) -> set[str]:
    """The run ids the workflow must plan: pairs (or students x teachers) x (each grid's sources x methods) x seeds."""
    study = config["study"]
    pairs = (
        [(p["student"], p["teacher"]) for p in study["pairs"]]
        if "pairs" in study
        else [(s, t) for s in study["students"] for t in study["teachers"]]
    )
    grids = [(study["sources"], study["methods"])] + [(g["sources"], g["methods"]) for g in study.get("grids", [])]
    runs = set()
    for student, teacher in pairs:
        for sources, methods in grids:
            for source, method, seed in itertools.product(sources, methods, study["seeds"]):
                plain_sft = config["methods"][method]["loss"] == "sft" and source in ("gt", "student", "mix_request_gt")
                runs.add(f"{student}__{'none' if plain_sft else teacher}/{source}/{method}/seed{seed}")
    return runs


def _dry_run(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SNAKEMAKE, "-d", str(workdir), *args], capture_output=True, text=True, timeout=300, env=env or ENV
    )


def _jobs(stdout: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, {property: text}) of every job a dry run printed."""
    jobs = []
    for rule, body in JOB.findall(stdout):
        fields = dict(line.strip().split(": ", 1) for line in body.splitlines() if ": " in line)
        jobs.append((rule, fields))
    return jobs


def _job_stats(stdout: str) -> dict[str, int]:
    table = stdout.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def _wildcards(fields: dict[str, str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in fields["wildcards"].split(", "))


@pytest.fixture(scope="module")
def paper_plan(tmp_path_factory) -> str:
    """stdout of `snakemake -n --workflow-profile profiles/slurm --configfile config/paper.yaml`."""
    workdir = tmp_path_factory.mktemp("paper")
    result = _dry_run(
        workdir, "--workflow-profile", str(REPO / "profiles" / "slurm"), "--configfile", str(PAPER)
    )
    assert result.returncode == 0, result.stderr[-5000:] + result.stdout[-3000:]
    # placeholders are planned, not required: startup names each missing file once
    assert "kdlm: note: train_split: data file data/alpaca_gpt4_data.json does not exist yet" in result.stderr
    assert not (workdir / "results").exists()
    return result.stdout


def test_paper_plans_every_paper_run_and_nothing_else(paper_plan):
    config = _config(PAPER)
    expected = _expected_runs(config)
    assert len(expected) == 70  # 5 pairs x (6 KD methods x 2 sources + SeqKD) + plain SFT once per student
    distills = [_wildcards(fields) for rule, fields in _jobs(paper_plan) if rule == "distill"]
    planned = {
        f"{w['student']}__{w['teacher']}/{w['source']}/{w['method']}/seed{w['seed']}" for w in distills
    }
    assert planned == expected
    assert _job_stats(paper_plan)["distill"] == len(expected) == len(distills)
    # nothing of the lab leaks in from config.yaml: no lab model, data set, task or method
    for leaked in ("results/lab", "llama-teacher", "llama-student", "lab_test", "/fkl/", "results/data/lab/"):
        assert leaked not in paper_plan, leaked


def test_paper_pairs_stay_within_a_family(paper_plan):
    families = {"opt": "facebook/opt-", "pythia": "EleutherAI/pythia-", "llama": "huggyllama/llama-"}
    config = _config(PAPER)
    models = {**config["students"], **config["teachers"]}

    def family(name: str) -> str:
        return next(f for f, prefix in families.items() if models[name]["path"].startswith(prefix))

    pairs = set()
    for rule, fields in _jobs(paper_plan):
        if rule == "distill" and _wildcards(fields)["teacher"] != "none":
            w = _wildcards(fields)
            assert family(w["student"]) == family(w["teacher"]), w
            pairs.add((w["student"], w["teacher"]))
    assert pairs == {(p["student"], p["teacher"]) for p in config["study"]["pairs"]}
    assert {family(t) for _, t in pairs} == set(families)


def test_paper_plan_prints_gpu_resources_of_each_job(paper_plan):
    from kdlm.job_plan import plan_study

    plan = plan_study(_config(PAPER))
    jobs = _jobs(paper_plan)
    launches = {}
    for rule, fields in jobs:
        resources = fields["resources"]
        if rule in ("distill", "teacher_sft"):
            # the memory plan's GPUs (kdlm.job_plan), one process per GPU
            w = _wildcards(fields)
            if rule == "teacher_sft":
                placement = plan.placement(rule, w["teacher"], "none")
            else:
                live = w["teacher"] != "none" and not (w["method"] == "sft" and w["source"] == "teacher")
                placement = plan.placement(rule, w["student"], w["teacher"] if live else "none")
            assert f"gpu={placement.gpus}," in resources + ",", (rule, w, resources)
            assert "mem_mb=64000" in resources and "runtime=720" in resources, rule
            assert "cpus_per_gpu=8" in resources
            launches[(rule, w.get("student"), w.get("teacher"))] = placement
        elif rule in ("evaluate", "generate_shard", "harness", "teacher_signal"):
            assert "gpu=1" in resources, rule
        else:  # localrules: run on the submit host, no GPU
            assert "gpu=1" not in resources, rule
    assert "Job stats:" in paper_plan and re.search(r"^total\s+\d+$", paper_plan, re.MULTILINE)
    # the paper's LLaMA pair does not fit one 80 GB GPU: several, sharded; the OPT pairs fit one
    assert launches[("distill", "llama-7b", "llama-13b")].strategy == "fsdp"
    assert launches[("distill", "llama-7b", "llama-13b")].gpus > 1
    assert launches[("distill", "opt-1.3b", "opt-6.7b")].gpus == 1
    assert "torchrun --standalone --nproc-per-node=4 --no-python kdlm distill --student huggyllama/llama-7b" in paper_plan


def test_a_job_that_fits_on_no_gpu_stops_the_workflow_before_any_job(tmp_path):
    small = [f"{rule}:{key}={value}" for rule in ("teacher_sft", "distill")
             for key, value in (("gpu_memory_gb", 24), ("max_gpus", 2))]  # fmt: skip
    result = _dry_run(tmp_path, "--workflow-profile", str(REPO / "profiles" / "slurm"),
                      "--configfile", str(PAPER), "--set-resources", *small)  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "kdlm: invalid configuration: training jobs that fit on no 24 GB GPU:" in result.stderr
    assert "distill llama-7b ← llama-13b: needs " in result.stderr
    assert "Traceback" not in result.stderr
    assert "Job stats" not in result.stdout + result.stderr and not (tmp_path / "results").exists()


def test_paper_evaluates_each_teacher_and_student_once_per_task(paper_plan):
    config = _config(PAPER)
    stats = _job_stats(paper_plan)
    teachers = {p["teacher"] for p in config["study"]["pairs"]}
    students = {p["student"] for p in config["study"]["pairs"]}
    assert stats["teacher_sft"] == len(teachers)  # opt-6.7b teaches two students, fine-tuned once
    tasks = config["study"]["tasks"]
    evaluated = Counter(_wildcards(f)["model"] for rule, f in _jobs(paper_plan) if rule == "evaluate")
    assert {m for m in evaluated if m.startswith("teacher/")} == {f"teacher/{t}" for t in teachers}
    assert {m for m in evaluated if m.startswith("base/")} == {f"base/{s}" for s in students}
    assert set(evaluated.values()) == {len(tasks)}
    assert stats["evaluate"] == len(tasks) * (len(teachers) + len(students) + stats["distill"])
    assert stats["harness"] == len(teachers) + len(students) + stats["distill"]


def test_paper_evaluation_sets_are_those_of_instruct_eval():
    paper, instruct = _config(PAPER), yaml.safe_load((REPO / "config" / "instruct_eval.yaml").read_text())
    assert sorted(paper["study"]["tasks"]) == sorted(instruct["evaluation"]["tasks"])
    for task, ref in instruct["evaluation"]["tasks"].items():
        assert paper["evaluation"]["tasks"][task] == ref
        assert paper["datasets"][ref["dataset"]] == instruct["datasets"][ref["dataset"]]


def test_default_dry_run_prints_the_job_count(tmp_path):
    result = _dry_run(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = _job_stats(result.stdout)
    assert stats["distill"] == len(_expected_runs(_config()))
    assert stats["total"] == sum(n for job, n in stats.items() if job != "total")


@pytest.mark.parametrize(("visible", "gpu"), [("", None), ("0", "gpu=1")], ids=["cpu-only", "one-gpu"])
def test_gpu_jobs_ask_for_a_gpu_only_where_there_is_one(tmp_path, visible, gpu):
    """The default profile caps GPU jobs with a global gpu=1; on a CPU-only machine they ask for none."""
    profile = ["--workflow-profile", str(REPO / "profiles" / "default")]
    result = _dry_run(tmp_path, *profile, env={**ENV, "CUDA_VISIBLE_DEVICES": visible})
    assert result.returncode == 0, result.stderr[-3000:]
    for rule, fields in _jobs(result.stdout):
        if rule in ("teacher_sft", "generate", "teacher_signal", "distill", "evaluate"):
            assert (gpu in fields["resources"]) if gpu else "gpu=1" not in fields["resources"], rule
        else:
            assert "gpu=1" not in fields["resources"], rule
    # one GPU: distill runs plain `kdlm distill`, not torchrun
    assert "torchrun" not in result.stdout


@pytest.mark.parametrize(
    ("study", "expected"),
    [
        (
            "pairs: [{student: llama-student, teacher: opt-6.7b}]",
            "study.pairs.0.teacher: unknown name 'opt-6.7b'; allowed (defined under 'teachers'): ['llama-teacher']",
        ),
        (
            "pairs: [{student: llama-teacher, teacher: llama-teacher}]",
            "study.pairs.0.student: unknown name 'llama-teacher'; allowed (defined under 'students'): "
            "['llama-student']",
        ),
        (
            "pairs: [{student: llama-student, teacher: llama-teacher}, {student: llama-student, teacher: llama-teacher}]",
            "study.pairs.1: the same pair as study.pairs.0",
        ),
        ("pairs: [{student: llama-student}]", "study.pairs.0: 'teacher' is a required property"),
        (
            "tasks: [lab_test, dolly]",
            "study.tasks: unknown name 'dolly'; allowed (defined under 'evaluation.tasks')",
        ),
    ],
    ids=["unknown-teacher", "unknown-student", "duplicate", "incomplete", "unknown-task"],
)
def test_bad_pairs_fail_before_any_job_naming_the_entry(tmp_path, study, expected):
    (tmp_path / "bad.yaml").write_text(f"study:\n  {study}\n")
    result = _dry_run(tmp_path, "--configfile", str(tmp_path / "bad.yaml"))
    assert result.returncode != 0
    assert expected in result.stderr + result.stdout
    assert "Job stats" not in result.stdout + result.stderr


def test_pairs_replace_students_times_teachers(tmp_path):
    """Two students and two teachers, two pairs: two pairs' runs, not four; shared names built once."""
    (tmp_path / "pairs.yaml").write_text(
        "students:\n  other-student: {path: results/lab/models/llama-student}\n"
        "teachers:\n  other-teacher: {path: results/lab/models/llama-teacher}\n"
        "study:\n"
        "  students: [llama-student, other-student]\n  teachers: [llama-teacher, other-teacher]\n"
        "  pairs:\n"
        "    - {student: llama-student, teacher: llama-teacher}\n"
        "    - {student: other-student, teacher: llama-teacher}\n"
    )
    result = _dry_run(tmp_path, "--configfile", str(tmp_path / "pairs.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    config = _config(tmp_path / "pairs.yaml")
    distills = {
        "{student}__{teacher}/{source}/{method}/seed{seed}".format(**_wildcards(f))
        for rule, f in _jobs(result.stdout)
        if rule == "distill"
    }
    assert distills == _expected_runs(config)
    assert "other-teacher" not in result.stdout
    stats = _job_stats(result.stdout)
    assert stats["teacher_sft"] == 1 and stats["generate"] == 1
    models = {_wildcards(f)["model"] for rule, f in _jobs(result.stdout) if rule == "evaluate"}
    assert {m for m in models if "/" in m and m.split("/")[0] in ("teacher", "base")} == {
        "teacher/llama-teacher",
        "base/llama-student",
        "base/other-student",
    }


def test_cheap_rules_are_localrules(tmp_path):
    """On a cluster, the lab, data preparation, mixing, shard merging, judge and report run on the submit
    host; every GPU stage is submitted."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    (tmp_path / "all_rules.yaml").write_text(
        "evaluation:\n  judge: {enabled: true}\nteacher_generation:\n  shards: 2\n"
    )
    with SnakemakeApi(OutputSettings()) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(configfiles=[PAPER, tmp_path / "all_rules.yaml"]),
            snakefile=REPO / "workflow" / "Snakefile",
            workdir=tmp_path,
        )
        workflow = workflow_api._workflow  # the parsed workflow: Snakemake has no public accessor
        rules = {rule.name for rule in workflow.rules}
        local = {name for name in rules if name in workflow._localrules}
    assert local == {
        "all", "lab_corpus", "lab_tokenizer", "lab_model", "prepare", "generate_merge", "mix", "mixes",
        "judge", "report", "teacher_data", "runs", "evals",
    }  # fmt: skip
    assert rules - local == {"teacher_sft", "generate_shard", "teacher_signal", "distill", "evaluate", "harness"}


def test_kdlm_plan_prints_every_pair_of_the_paper():
    done = subprocess.run([str(Path(sys.executable).parent / "kdlm"), "plan", "--configfile", str(PAPER)],
                          capture_output=True, text=True, timeout=300, env=ENV)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in done.stdout.splitlines() if line.startswith("| ")}  # fmt: skip
    for pair in _config(PAPER)["study"]["pairs"]:
        assert f"distill {pair['student']} ← {pair['teacher']}" in rows, pair
    llama = rows["distill llama-7b ← llama-13b"]
    assert llama[-1].startswith("fsdp×") and int(llama[-1].split("×")[1].split()[0]) > 1
    assert float(llama[2]) > 80  # ddp on one GPU: more than a GPU holds
    assert rows["distill opt-1.3b ← opt-6.7b"][-1] == "ddp×1"
    for teacher in ("opt-6.7b", "pythia-6.9b", "llama-13b"):
        assert f"teacher fine-tuning {teacher}" in rows
    # on 24 GB GPUs, at most 2 per job, the LLaMA pair fits nowhere: rc 2, named with what would make it fit
    small = subprocess.run([str(Path(sys.executable).parent / "kdlm"), "plan", "--configfile", str(PAPER),
                            "--gpu-memory-gb", "24"], capture_output=True, text=True, timeout=300, env=ENV)  # fmt: skip
    assert small.returncode == 2
    assert "fits nowhere: distill llama-7b ← llama-13b: needs " in small.stdout


def test_the_lab_is_planned_from_the_configs_its_models_will_have(tmp_path, monkeypatch):
    """Lab models do not exist before the workflow builds them: the plan builds their configs from lab.models,
    and counts the parameters the built model then has."""
    from kdlm.job_plan import plan_study
    from kdlm.lab.build import build_lab
    from kdlm.lab.corpus import CorpusConfig
    from kdlm.lab.spec import LabModelConfig
    from kdlm.models import count_parameters, load_model

    config = _config()
    plan = plan_study(config)
    assert not plan.problems
    assert plan.placement("distill", "llama-student", "llama-teacher").gpus == 1
    rows = {r["job"]: r for r in plan.rows}
    specs = {name: LabModelConfig(**spec) for name, spec in config["lab"]["models"].items()}
    built = build_lab(tmp_path, CorpusConfig(**config["lab"]["corpus"]), specs,
                      config["lab"]["tokenizer"]["vocab_size"])  # fmt: skip
    row = rows["distill llama-student ← llama-teacher"]
    # before the tokenizer exists the plan takes lab.tokenizer.vocab_size, the BPE's ceiling: it errs high
    for name, planned in (("llama-student", row["student_b"]), ("llama-teacher", row["teacher_b"])):
        actual = count_parameters(load_model(str(built[name])))
        assert actual <= round(planned * 1e9) <= 1.05 * actual, name
    # once the lab's tokenizer is built (the workflow's results/lab/tokenizer), its exact size
    (tmp_path / "results" / "lab").mkdir(parents=True)
    (tmp_path / "results" / "lab" / "tokenizer").symlink_to(built["tokenizer"])
    monkeypatch.chdir(tmp_path)
    row = next(r for r in plan_study(config).rows if r["job"] == "distill llama-student ← llama-teacher")
    assert round(row["student_b"] * 1e9) == count_parameters(load_model(str(built["llama-student"])))


def test_the_profile_declares_the_gpus_the_plan_uses():
    from kdlm.job_plan import declared_gpus, profile_gpus

    assert profile_gpus(REPO / "profiles" / "slurm") == {"gpu_memory_gb": 80.0, "max_gpus": 8}
    assert profile_gpus(REPO / "profiles" / "slurm-local") == {}  # no declaration: no plan, GPU_PER_JOB
    with pytest.raises(ValueError, match="gpu_memory_gb differs between teacher_sft and distill"):
        declared_gpus({"teacher_sft": {"gpu_memory_gb": 40}, "distill": {"gpu_memory_gb": 80}})
    with pytest.raises(ValueError, match="max_gpus must be a positive number, got 'many'"):
        declared_gpus({"distill": {"gpu_memory_gb": 80, "max_gpus": "many"}})


def test_a_ddp_placement_never_passes_cpu_offload():
    from kdlm.job_plan import Placement
    from kdlm.training.config import DistributedConfig

    section = {"strategy": "auto", "cpu_offload": True}
    ddp, fsdp = Placement(1, "ddp", False).distributed(section), Placement(4, "fsdp", True).distributed(section)
    assert "cpu_offload" not in ddp and DistributedConfig(**ddp).strategy == "ddp"
    assert fsdp == {"strategy": "fsdp", "cpu_offload": True, "teacher": "shard"}


def test_each_teacher_runs_once_per_offline_file_and_its_runs_read_the_cache(paper_plan):
    """One teacher_signal job per (teacher, offline training file); every KD run on gt or teacher data reads
    its cache (`--teacher-signal`) and needs it as an input; SeqKD and SFT read none."""
    jobs = _jobs(paper_plan)
    caches = {(w["teacher"], w["source"]) for w in (_wildcards(f) for r, f in jobs if r == "teacher_signal")}
    teachers = {_wildcards(f)["teacher"] for r, f in jobs if r == "distill"} - {"none"}
    assert caches == {(t, s) for t in teachers for s in ("gt", "teacher")}
    assert _job_stats(paper_plan)["teacher_signal"] == len(caches)
    for rule, fields in jobs:
        if rule != "distill":
            continue
        w = _wildcards(fields)
        cache = f"results/teacher_signal/alpaca_gpt4/{w['teacher']}/{w['source']}"
        reads = w["method"] not in ("sft",) and w["teacher"] != "none"
        assert (f"{cache}/signal.json" in fields["input"]) == reads, w
