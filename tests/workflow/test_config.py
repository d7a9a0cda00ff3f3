"""Config validation: every shipped config is valid; bad ones stop `snakemake -n` before any job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from kdlm.config_checks import check_config, layer_config
from kdlm.study import Study

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile")]


def _merged(*paths: Path) -> dict:
    config: dict = {}
    for path in paths:
        layer_config(config, yaml.safe_load(path.read_text()) or {})
    return config


@pytest.mark.parametrize("path", sorted((REPO / "config").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    layers = [REPO / "config" / "config.yaml"] + ([path] if path.name != "config.yaml" else [])
    config = _merged(*layers)
    jsonschema.Draft202012Validator(schema).validate(config)
    assert check_config(config) == []
    assert Study(config).runs()


def test_the_schema_holds_no_numeric_range():
    """Ranges live only in the section dataclasses, which CLI values and config values both go through."""
    text = (REPO / "workflow" / "schemas" / "config.schema.yaml").read_text()
    assert not [word for word in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if f"{word}:" in text]


def test_every_config_key_is_documented():
    readme = (REPO / "config" / "README.md").read_text()
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    missing = [key for key in schema["properties"] if f"`{key}`" not in readme]
    assert not missing, f"config/README.md does not explain {missing}"


def _dry_run(tmp_path, overrides: str) -> subprocess.CompletedProcess:
    (tmp_path / "bad.yaml").write_text(overrides)
    return subprocess.run(
        [*SNAKEMAKE, "-n", "-d", str(tmp_path), "--configfile", str(tmp_path / "bad.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ("study:\n  methods: [fkl, atkd_typo]\n", "study.methods: unknown name 'atkd_typo'; allowed (defined under 'methods'): ['atkd', 'dkd', 'fkl', 'jsd', 'rkl', 'sft', 'tvd']"),
        ("study:\n  grids: [{sources: [student], methods: [akl_typo]}]\n", "study.grids.0.methods: unknown name 'akl_typo'; allowed (defined under 'methods')"),
        ("methods:\n  bad: {loss: kl}\n", "methods.bad: unknown loss 'kl'; known losses: akl, atkd, dkd, forward"),
        ("study:\n  sources: [gt, nope]\n", "study.sources: unknown source 'nope'; allowed: ['gt', 'teacher', 'student'"),
        ("training:\n  scheduler: cosin\n", "training: unknown scheduler 'cosin'; allowed: ['cosine'"),
        ("lab:\n  models:\n    llama-student: {family: llama, hidden_size: 100, num_layers: 1, num_heads: 3, intermediate_size: 8}\n",
         "lab.models.llama-student: hidden_size (100) must be divisible by num_heads (3)"),
        ("teacher_generation:\n  overlong: drop\n", "teacher_generation: unknown overlong policy 'drop'"),
        ("lab:\n  models:\n    llama-student: {family: gpt2, hidden_size: 8, num_layers: 1, num_heads: 1, intermediate_size: 8}\n",
         "lab.models.llama-student: unknown model family 'gpt2'; allowed: ['llama', 'gpt_neox', 'opt']"),
        ("datasets:\n  lab: {format: xml}\n", "datasets.lab: unknown data format 'xml'"),
        ("training:\n  lr: fast\n", "training.lr: 'fast' is not of type 'number'"),
        ("training:\n  colour: red\n", "training: Additional properties are not allowed ('colour' was unexpected)"),
        # the same words as `kdlm distill --training '{"weight_decay": -1}'`: one range, in the dataclass
        ("training:\n  weight_decay: -1\n", "training: weight_decay must be >= 0, got -1"),
        ("lab:\n  models:\n    llama-student: {family: llama, hidden_size: 8, num_layers: 1, num_heads: 0, intermediate_size: 8}\n",
         "lab.models.llama-student: num_heads must be >= 1, got 0"),
        ("study:\n  seeds: [0, -1]\n", "study.seeds: -1 is not a seed; seeds are integers >= 0"),
        ("methods:\n  at: {loss: atkd, lamda: 0.3}\n", "methods.at: loss 'atkd': unknown hyperparameter 'lamda'"),
        ("evaluation:\n  tasks:\n    t: {dataset: nowhere, split: test}\n", "evaluation.tasks.t.dataset: unknown dataset 'nowhere'"),
    ],
)
def test_bad_config_fails_before_any_job_naming_the_key(tmp_path, overrides, expected):
    result = _dry_run(tmp_path, overrides)
    assert result.returncode != 0
    assert expected in result.stderr + result.stdout
    assert "Job stats" not in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_slurm_profile_plans_gpu_jobs_and_torchrun_for_several_gpus(tmp_path):
    profile = ["--workflow-profile", str(REPO / "profiles" / "slurm")]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [*SNAKEMAKE, "-n", "-d", str(tmp_path), *profile], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    distill = result.stdout.split("rule distill:")[1].split("Shell command:")
    assert "gpu=1" in distill[0] and "mem_mb=64000" in distill[0]
    assert not distill[1].lstrip().startswith("torchrun")
    result = subprocess.run(
        [*SNAKEMAKE, "-n", "-d", str(tmp_path), *profile, "--set-resources", "distill:gpu=4"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torchrun --standalone --nproc-per-node=4" in result.stdout
