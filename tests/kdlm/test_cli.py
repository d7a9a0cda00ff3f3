"""`kdlm <verb>`: every verb answers --help; errors come out as one clear line and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

KDLM = [str(Path(sys.executable).parent / "kdlm")]
VERBS = ["lab corpus", "lab tokenizer", "lab model", "prepare", "sft", "generate", "mix", "distill",
         "evaluate", "report", "results", "bench"]  # fmt: skip


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb):
    result = subprocess.run([*KDLM, *verb.split(), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: kdlm" in result.stdout


def test_bad_input_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": 3}\n')
    result = subprocess.run(
        [*KDLM, "prepare", "--input", str(bad), "--format", "jsonl", "--dataset", "d", "--out", str(tmp_path / "o.parquet")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert f"kdlm prepare: error: {bad}: line 1: field 'output' must be a string" in result.stderr
    assert "Traceback" not in result.stderr


def test_lab_corpus_then_results_table(tmp_path, lab, lab_records):
    result = subprocess.run(
        [*KDLM, "lab", "corpus", "--out-dir", str(tmp_path / "c"), "--n-train", "5", "--n-validation", "2", "--n-test", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads((tmp_path / "c" / "train.json").read_text())) == 5

    label = {"kind": "base", "model": "base/s", "student": "s", "teacher": "", "source": "", "method": "", "seed": 0, "task": "t"}
    evaluation = tmp_path / "eval.parquet"
    result = subprocess.run(
        [*KDLM, "evaluate", "--model", str(lab["student"]), "--records", str(lab_records["test"]), "--out", str(evaluation),
         "--label", json.dumps(label), "--max-new-tokens", "4"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    tables = tmp_path / "tables"
    result = subprocess.run([*KDLM, "report", "--evals", str(evaluation), "--out-dir", str(tables)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    result = subprocess.run(
        [*KDLM, "results", "--table", str(tables / "summary.parquet"), "--metric", "exact_match", "--filter", "kind=base"],
        capture_output=True, text=True, timeout=120, env={"COLUMNS": "200", "PATH": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "(base)" in result.stdout and "exact_match" in result.stdout and "rouge_l" not in result.stdout
    result = subprocess.run(
        [*KDLM, "results", "--table", str(tables / "summary.parquet"), "--filter", "colour=red"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "unknown filter field 'colour'" in result.stderr


def test_the_kdlm_command_keeps_its_output_and_exit_status():
    """`kdlm` skips the interpreter's teardown (`kdlm.cli.run`): what a verb printed to a block-buffered
    pipe still arrives, and the exit status is the verb's."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a pipe is block-buffered then
    smoke = Path(__file__).resolve().parents[2] / "config" / "smoke.yaml"
    result = subprocess.run([*KDLM, "check-config", str(smoke)], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("valid: ") and result.stdout.endswith("\n")
    result = subprocess.run([*KDLM, "check-config", "missing.yaml"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("kdlm check-config: error: ")
