"""The study model: sources as data, run ids, the run matrix, and the checks of a config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdlm.config_checks import check_config
from kdlm.study import NO_TEACHER, SOURCES, RunId, Study

REPO = Path(__file__).resolve().parents[2]


def _config(**study) -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["study"] = {**config["study"], "grids": [], **study}
    return config


def test_run_id_round_trip_and_search():
    run = RunId("opt-1.3b", "opt-6.7b", "mix_request_gt", "atkd_l0.5", 3)
    assert str(run) == "opt-1.3b__opt-6.7b/mix_request_gt/atkd_l0.5/seed3"
    assert RunId.parse(str(run)) == run
    assert RunId.search(f"results/runs/{run}/train_log.parquet") == run
    assert RunId.search("results/tables/summary.parquet") is None
    with pytest.raises(ValueError, match="not a run id"):
        RunId.parse("opt-1.3b/gt/fkl/seed0")


def test_sources_say_what_needs_a_teacher():
    # the teacher model is loaded for every loss but sft, and for sft only where it helps decode
    assert [s for s in SOURCES if SOURCES[s].needs_live_teacher("sft")] == ["mix_token"]
    assert all(SOURCES[s].needs_live_teacher("forward") for s in SOURCES)
    # the training file holds teacher answers: SeqKD data and the mixes built on it
    assert [s for s in SOURCES if SOURCES[s].needs_teacher_answers] == ["teacher", "mix_token", "mix_request_teacher"]
    assert [s for s in SOURCES if SOURCES[s].generates_during_training] == [
        "student", "mix_token", "mix_request_teacher", "mix_request_gt"]  # fmt: skip
    assert SOURCES["student"].online_share(0.3) == 1.0 and SOURCES["mix_request_gt"].online_share(0.3) == 0.3


def test_runs_without_a_teacher_are_planned_once_as_none():
    study = Study(_config(sources=["gt", "teacher", "student", "mix_token"], methods=["fkl", "sft"], seeds=[0, 1]))
    runs = {str(r) for r in study.runs()}
    assert len(runs) == len(study.runs()) == 16
    assert "llama-student__none/gt/sft/seed0" in runs
    assert "llama-student__none/student/sft/seed1" in runs
    assert "llama-student__llama-teacher/teacher/sft/seed0" in runs  # SeqKD reads the teacher's answers
    assert "llama-student__llama-teacher/mix_token/sft/seed0" in runs  # the teacher decodes with the student
    assert "llama-student__llama-teacher/student/fkl/seed0" in runs
    assert study.mix_teacher("llama-teacher", "student") == NO_TEACHER
    assert study.baseline_method() == "fkl"


def test_metrics_follow_the_optional_evaluations():
    config = _config()
    assert Study(config).metrics() == ["rouge_l", "exact_match", "response_tokens"]
    config["evaluation"]["judge"] = {"enabled": True, "base_url": "http://127.0.0.1:1/v1", "model": "j"}
    config["evaluation"]["lm_eval"] = {"enabled": True}
    assert Study(config).metrics() == ["rouge_l", "exact_match", "response_tokens", "judge", "harness"]


def test_check_config_reports_every_problem_at_once():
    config = _config(sources=["gt", "nope"], methods=["fkl", "missing"])
    config["training"]["scheduler"] = "cosin"
    config["methods"]["bad"] = {"loss": "atkd", "lam": 2}
    problems = check_config(config)
    assert any(p.startswith("study.sources: unknown source 'nope'") for p in problems)
    assert any(p.startswith("study.methods: unknown name 'missing'") for p in problems)
    assert any(p.startswith("training: unknown scheduler 'cosin'") for p in problems)
    assert any(p.startswith("methods.bad: loss 'atkd': lam=2 is invalid") for p in problems)
