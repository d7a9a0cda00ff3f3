"""Planning a study: which jobs a run waits for, and what the planner imports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "-n", "-c1"]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _dry_run(tmp_path: Path, *args: str, python: list[str] | None = None) -> subprocess.CompletedProcess:
    command = [*(python or [sys.executable]), *SNAKEMAKE[1:], "-d", str(tmp_path), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_sft_on_student_waits_for_no_teacher(tmp_path):
    """sft on on-policy `student` rows loads no teacher and reads no teacher answers: it is planned once,
    as teacher `none`, and neither fine-tunes nor runs the teacher."""
    (tmp_path / "study.yaml").write_text("study:\n  sources: [student]\n  methods: [sft]\n  grids: []\n")
    result = _dry_run(tmp_path, "--configfile", str(tmp_path / "study.yaml"), "-p", "runs")
    out = result.stdout
    assert "results/runs/llama-student__none/student/sft/seed0/model.safetensors" in out
    assert "llama-student__llama-teacher" not in out
    for rule in ("teacher_sft", "generate"):
        assert not re.search(rf"^(local)?rule {rule}:", out, re.MULTILINE), f"the run waits for {rule}"
    distill = out.split("rule distill:")[1].split("\n\n")[0]
    assert "--teacher" not in distill and "results/models/teachers" not in distill


def test_the_paper_plan_imports_no_torch(tmp_path):
    """`snakemake -n` of config/paper.yaml parses the DAG without importing torch (python -X importtime)."""
    result = _dry_run(tmp_path, "--configfile", str(REPO / "config" / "paper.yaml"),
                      python=[sys.executable, "-X", "importtime"])  # fmt: skip
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "kdlm.study" in imported and "snakemake" in imported
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "transformers", "numba"))
    assert not heavy, f"planning imported {heavy[:5]}"
    assert "Job stats" in result.stdout


def test_the_claims_study_plans_its_matrix_uncertainty_and_report(tmp_path):
    """config/lab_claims.yaml: two teachers × gt/teacher × fkl and four ATKD λs × three seeds, each
    teacher's uncertainty on both training files, and the claims report fed by all of them."""
    result = _dry_run(tmp_path, "--configfile", str(REPO / "config" / "lab_claims.yaml"), "-p")
    out = result.stdout
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1].split("total")[0], re.MULTILINE))
    assert {k: int(counts[k]) for k in ("distill", "teacher_uncertainty", "claims", "lab_pretrain", "teacher_sft")} \
        == {"distill": 60, "teacher_uncertainty": 4, "claims": 1, "lab_pretrain": 3, "teacher_sft": 2}  # fmt: skip
    claims = out.split("rule claims:")[1].split("\n\n")[0]
    for teacher in ("llama-teacher-small", "llama-teacher"):
        for source in ("gt", "teacher"):
            assert f"results/uncertainty/lab/{teacher}/{source}.parquet" in claims
    assert "results/eval/llama-student__llama-teacher-small/teacher/atkd_l05/seed2/lab_test.parquet" in claims
    assert '"large_teacher": "llama-teacher"' in claims and "results/tables/claims.md" in claims
