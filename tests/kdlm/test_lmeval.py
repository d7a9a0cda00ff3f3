"""The lm-eval wrapper: a clear failure without lm-eval or its data, missing cells instead of a failed
report, and lm-eval's result dictionary turned into the long table (lm-eval itself is an optional extra
and its data sets need the hub, so its output is given here by a stand-in module)."""

from __future__ import annotations

import sys
import types

import pandas as pd
import pytest

from kdlm.cli import main
from kdlm.evaluation.lmeval import HarnessConfig, HarnessUnavailable, evaluate_harness, results_table
from kdlm.report import ReportConfig, write_report
from tests.kdlm.test_report import _write_eval

LABEL = {"kind": "run", "model": "s__t/teacher/fkl/seed0", "student": "s", "teacher": "t", "source": "teacher",
         "method": "fkl", "seed": 0}  # fmt: skip
OUTPUT = {
    "results": {
        "mmlu": {"acc,none": 0.25, "acc_stderr,none": 0.01, "alias": "mmlu"},
        "bbh": {"exact_match,get-answer": 0.125, "exact_match_stderr,get-answer": 0.02},
        "drop": {"em,none": 0.05, "f1,none": 0.1, "f1_stderr,none": 0.005, "em_stderr,none": 0.004},
    }
}


@pytest.fixture
def no_lm_eval(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError


def test_without_lm_eval_the_error_says_how_to_install(no_lm_eval, tmp_path):
    with pytest.raises(HarnessUnavailable, match=r"pip install -e '\.\[lmeval\]'"):
        evaluate_harness("model", tmp_path / "h.parquet", HarnessConfig())
    assert main(["harness", "--model", "m", "--out", str(tmp_path / "h.parquet")]) == 2


def test_unreachable_data_marks_cells_missing_and_the_report_shows_them_empty(monkeypatch, tmp_path):
    def simple_evaluate(**kwargs):
        raise ConnectionError("Couldn't reach 'cais/mmlu' on the Hub")

    monkeypatch.setitem(sys.modules, "lm_eval", types.SimpleNamespace(simple_evaluate=simple_evaluate))
    with pytest.raises(HarnessUnavailable, match="Hugging Face hub"):
        evaluate_harness("m", tmp_path / "x.parquet", HarnessConfig())
    out = tmp_path / "harness.parquet"
    argv = ["harness", "--model", "m", "--out", str(out), "--on-error", "missing", "--label", __import__("json").dumps(LABEL)]
    assert main(argv) == 0
    table = pd.read_parquet(out)
    assert table["status"].tolist() == ["missing"] * 3 and table["value"].isna().all()
    evaluation = _write_eval(tmp_path, "fkl", "t1")
    md = write_report([evaluation], tmp_path / "tables", ReportConfig(harness_files=[out])).read_text()
    assert "| s__t/teacher/fkl/seed0 | – | – | – | – |" in md.split("## harness")[1]


def test_results_become_the_long_table_and_headline_scores(monkeypatch, tmp_path):
    calls = []

    def simple_evaluate(**kwargs):
        calls.append(kwargs)
        return OUTPUT

    monkeypatch.setitem(sys.modules, "lm_eval", types.SimpleNamespace(simple_evaluate=simple_evaluate))
    out = tmp_path / "harness.parquet"
    evaluate_harness("results/runs/x", out, HarnessConfig(limit=5), LABEL)
    assert calls[0]["model"] == "hf" and calls[0]["model_args"].startswith("pretrained=results/runs/x")
    assert calls[0]["tasks"] == ["mmlu", "bbh", "drop"] and calls[0]["limit"] == 5
    table = results_table(OUTPUT)
    assert len(table) == 4 and "alias" not in set(table["metric"])
    summary = pd.read_parquet(
        write_report([_write_eval(tmp_path, "fkl", "t1")], tmp_path / "t", ReportConfig(harness_files=[out])).with_suffix(
            ".parquet"
        )
    )
    harness = summary[summary["metric"] == "harness"].set_index("task")
    assert harness["value"].to_dict() == pytest.approx({"bbh": 0.125, "drop": 0.1, "mmlu": 0.25})
    assert harness.loc["mmlu", "ci_low"] == pytest.approx(0.25 - 1.96 * 0.01)


def test_config_errors():
    with pytest.raises(ValueError, match="on_error"):
        HarnessConfig(on_error="ignore")
