"""End to end: config/smoke.yaml through Snakemake into a temporary directory, then a no-op rerun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "-c2"]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _snakemake(
    workdir: Path, *extra: str, overrides: Path | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """The smoke study in `workdir`, optionally with a config layered on top and extra arguments (e.g. -n)."""
    configs = [str(REPO / "config" / "smoke.yaml")] + ([str(overrides)] if overrides else [])
    return subprocess.run(
        [*SNAKEMAKE, "-d", str(workdir), *extra, "--configfile", *configs],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("smoke")
    result = _snakemake(workdir, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


def test_summary_has_every_model_with_sane_values(smoke_dir):
    summary = pd.read_parquet(smoke_dir / "results" / "tables" / "summary.parquet")
    runs = {
        "llama-student__llama-teacher/gt/fkl/seed0",
        "llama-student__llama-teacher/teacher/fkl/seed0",
        "llama-student__llama-teacher/teacher/sft/seed0",
        "llama-student__none/gt/sft/seed0",
    }
    assert set(summary["model"]) == {"teacher/llama-teacher", "base/llama-student"} | runs
    assert set(summary["metric"]) == {"rouge_l", "exact_match", "response_tokens"}
    scores = summary[summary["metric"].isin(["rouge_l", "exact_match"])]
    assert scores["value"].between(0, 1).all()
    assert (scores["ci_low"] <= scores["value"]).all() and (scores["value"] <= scores["ci_high"]).all()
    assert (summary["n"] == 60).all()
    em = summary[summary["metric"] == "exact_match"].set_index("model")["value"]
    assert em["teacher/llama-teacher"] > em["base/llama-student"]
    markdown = (smoke_dir / "results" / "tables" / "summary.md").read_text()
    for model in runs:
        assert model in markdown
    csv = pd.read_csv(smoke_dir / "results" / "tables" / "summary.csv")
    assert len(csv) == len(summary)
    deltas = pd.read_csv(smoke_dir / "results" / "tables" / "deltas.csv")
    assert not deltas.empty
    plots = {p.name for p in (smoke_dir / "results" / "plots").glob("*.png")}
    assert {"train_loss.png", "scores_exact_match.png", "scores_rouge_l.png"} <= plots


def test_each_stage_wrote_its_contract(smoke_dir):
    results = smoke_dir / "results"
    text = pd.read_parquet(results / "lab" / "pretraining" / "text.parquet")
    assert len(text) == 300 and (text["prompt"] == "").all()
    for name in ("llama-teacher", "llama-student"):  # pretrained from results/lab/init/<name> on that text
        pretrained = json.loads((results / "lab" / "models" / name / "run.json").read_text())
        assert pretrained["student"] == f"results/lab/init/{name}"
        assert pretrained["data"] == "results/lab/pretraining/text.parquet" and pretrained["global_steps"] > 0
    for source in ("gt", "teacher"):  # one cached teacher signal per offline file, read by its fkl run
        cache = results / "teacher_signal" / "lab" / "llama-teacher" / source
        assert {"signal.json", "output_layer.safetensors", "part-00000.safetensors"} <= {p.name for p in cache.iterdir()}
        run_info = json.loads((results / "runs" / "llama-student__llama-teacher" / source / "fkl" / "seed0" / "run.json").read_text())
        assert run_info["teacher_signal"]["path"] == f"results/teacher_signal/lab/llama-teacher/{source}"
        assert not run_info["teacher_loaded"]
    run = results / "runs" / "llama-student__llama-teacher" / "teacher" / "fkl" / "seed0"
    assert {"config.json", "model.safetensors", "train_log.parquet", "run.json"} <= {p.name for p in run.iterdir()}
    generated = pd.read_parquet(results / "generated" / "lab" / "llama-teacher.parquet")
    records = pd.read_parquet(results / "data" / "lab" / "train.parquet")
    assert generated["id"].tolist() == records["id"].tolist()
    evaluation = pd.read_parquet(results / "eval" / "teacher" / "llama-teacher" / "lab_test.parquet")
    mixed = pd.read_parquet(results / "mixed" / "lab" / "none" / "gt.parquet")
    # one prompt template everywhere: generation, training data and evaluation format prompts identically
    test_records = pd.read_parquet(results / "data" / "lab" / "test.parquet")
    assert evaluation["prompt"].iloc[0].startswith("Human:\n" + test_records["instruction"].iloc[0])
    assert mixed["prompt"].tolist() == generated["prompt"].tolist()


def test_second_run_has_nothing_to_do(smoke_dir):
    result = _snakemake(smoke_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr


def _planned_jobs(smoke_dir: Path, tmp_path: Path, overrides: str) -> dict[str, int]:
    """Job counts of a dry run of the finished smoke study with `overrides` layered on top."""
    override_file = tmp_path / "override.yaml"
    override_file.write_text(overrides)
    result = _snakemake(smoke_dir, "-n", overrides=override_file)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:")[1].split("total")[0]
    counts = {}
    for line in table.splitlines()[3:]:
        if line.strip():
            job, count = line.split()
            counts[job] = int(count)
    return counts


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # one method's hyperparameter: only that method's runs, their evaluations and the report
        ("methods:\n  fkl: {loss: forward, temperature: 2.0}\n", {"distill": 2, "evaluate": 2, "report": 1, "all": 1}),
        # the teacher: its fine-tuning, generation and everything downstream that uses it
        (
            "teacher_training:\n  lr: 2.0e-3\n",
            {"teacher_sft": 1, "generate": 1, "mix": 1, "teacher_signal": 2, "distill": 3, "evaluate": 4,
             "report": 1, "all": 1},
        ),
        # the cached teacher signal's mode: both caches and the runs that read them (fkl on gt and teacher)
        (
            "teacher_signal:\n  mode: compact\n",
            {"teacher_signal": 2, "distill": 2, "evaluate": 2, "report": 1, "all": 1},
        ),
        # the lab's pretraining: both lab models, then everything trained from them
        (
            "lab:\n  pretraining:\n    training: {lr: 2.0e-3}\n",
            {"lab_pretrain": 2, "teacher_sft": 1, "generate": 1, "mix": 1, "teacher_signal": 2, "distill": 4,
             "evaluate": 6, "report": 1, "all": 1},
        ),
        # evaluation settings: evaluation and report only
        ("evaluation:\n  generation:\n    max_new_tokens: 20\n", {"evaluate": 6, "report": 1, "all": 1}),
    ],
    ids=["method-hparam", "teacher", "teacher-signal", "lab-pretraining", "evaluation"],
)
def test_only_changed_stages_rerun(smoke_dir, tmp_path, overrides, expected):
    assert _planned_jobs(smoke_dir, tmp_path, overrides) == expected
