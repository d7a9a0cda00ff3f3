"""The plan's teacher compute: passes and FLOP per training token of the distill jobs, with and without the
cached teacher signal, checked against counts made here from the config's matrix."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from kdlm.job_plan import _planning_ref, format_teacher_compute, plan_study, teacher_compute
from kdlm.memory_plan import model_shape
from kdlm.teacher_cache.config import TeacherSignalConfig

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "config" / "paper.yaml"
# per source: the share of rows generated during training (r: mix.ratio), whose answers its file holds
LIVE = {"gt": 0.0, "teacher": 0.0, "student": 1.0, "mix_token": 1.0, "mix_request_teacher": "r",
        "mix_request_gt": "r"}  # fmt: skip
ANSWERS = {"gt": "gt", "teacher": "teacher", "student": "gt", "mix_token": "teacher",
           "mix_request_teacher": "teacher", "mix_request_gt": "gt"}  # fmt: skip


def _config(*layers: Path | dict) -> dict:
    """config.yaml with `layers` (files or mappings) on top, merged as Snakemake merges --configfile."""
    config: dict = {}
    for layer in [REPO / "config" / "config.yaml", *layers]:
        update_config(config, layer if isinstance(layer, dict) else yaml.safe_load(layer.read_text()) or {})
    return config


def _expected(config: dict) -> dict[str, dict]:
    """Per teacher: its distill jobs (loss not sft, or source mix_token) as run ids, live passes (jobs x
    epochs), and cached passes (one per (teacher, file) over its offline share + each job's live share x
    epochs), counted from the config's matrix alone."""
    study = config["study"]
    ratio = config.get("mix", {}).get("ratio", 0.5)
    epochs = config["training"]["epochs"]
    pairs = [(p["student"], p["teacher"]) for p in study["pairs"]] if "pairs" in study else list(
        itertools.product(study["students"], study["teachers"]))  # fmt: skip
    grids = [(study["sources"], study["methods"])] + [(g["sources"], g["methods"]) for g in study.get("grids", [])]  # fmt: skip
    out: dict[str, dict] = {}
    for student, teacher in pairs:
        entry = out.setdefault(teacher, {"jobs": set(), "files": {}, "online": 0.0})
        for sources, methods in grids:
            for source, method, seed in itertools.product(sources, methods, study["seeds"]):
                if config["methods"][method]["loss"] == "sft" and source != "mix_token":
                    continue  # no teacher loaded
                run = f"{student}__{teacher}/{source}/{method}/seed{seed}"
                if run in entry["jobs"]:
                    continue
                entry["jobs"].add(run)
                share = ratio if LIVE[source] == "r" else LIVE[source]
                entry["online"] += share
                if share < 1:
                    owner = teacher if ANSWERS[source] == "teacher" else "gt"
                    entry["files"][(owner, source)] = 1 - share
    return {
        teacher: {
            "jobs": len(e["jobs"]),
            "passes_live": epochs * len(e["jobs"]),
            "passes_cached": sum(e["files"].values()) + epochs * e["online"],
            "offline_job_epochs": epochs * (len(e["jobs"]) - e["online"]),
            "caches": len(e["files"]),
        }
        for teacher, e in out.items()
    }


@pytest.fixture(scope="module")
def paper_plan():
    config = _config(PAPER)
    return config, plan_study(config)


def test_paper_teacher_compute_counts_the_matrix(paper_plan):
    config, plan = paper_plan
    expected = _expected(config)
    rows = {r["teacher"]: r for r in plan.teacher_compute}
    assert list(rows) == ["opt-6.7b", "pythia-6.9b", "llama-13b"]
    # 2 students x 2 sources x 6 teacher-loading methods (sft loads none) for OPT and Pythia, 1 student for LLaMA
    assert {t: r["jobs"] for t, r in rows.items()} == {"opt-6.7b": 24, "pythia-6.9b": 24, "llama-13b": 12}
    for teacher, row in rows.items():
        want = expected[teacher]
        assert row["jobs"] == want["jobs"]
        assert row["passes_live"] == want["passes_live"] == 3 * row["jobs"]
        # gt and teacher: all rows offline, one cache each, shared by the teacher's students and methods
        assert row["passes_cached"] == pytest.approx(want["passes_cached"]) and want["passes_cached"] == 2
        assert row["caches"] == want["caches"] == 2
        shape = model_shape(config["teachers"][teacher]["path"])
        assert row["parameters"] == shape.parameters
        assert (row["hidden"], row["vocab"]) == (shape.hidden, shape.vocab)
        forward, readout = 2 * shape.parameters, 2 * shape.hidden * shape.vocab
        assert row["flop_live"] == pytest.approx(want["passes_live"] * forward)
        cached = want["passes_cached"] * forward + want["offline_job_epochs"] * readout
        assert row["flop_cached"] == pytest.approx(cached)
        assert row["saving"] == pytest.approx(1 - row["flop_cached"] / row["flop_live"])
        assert 0.9 < row["saving"] < 1
    opt = model_shape("facebook/opt-6.7b")
    # OPT-1.3B <- OPT-6.7B: a teacher forward ~13.4 GFLOP per token, the cached exact readout ~0.41
    assert 2 * opt.parameters == pytest.approx(13.4e9, rel=0.01)
    assert 2 * opt.hidden * opt.vocab == pytest.approx(2 * 4096 * 50272) == pytest.approx(0.41e9, rel=0.01)
    assert rows["opt-6.7b"]["flop_live"] == pytest.approx(72 * 2 * opt.parameters)
    assert rows["opt-6.7b"]["flop_cached"] == pytest.approx(2 * 2 * opt.parameters + 72 * 2 * 4096 * 50272)


def test_paper_teacher_compute_table(paper_plan):
    _, plan = paper_plan
    text = format_teacher_compute(plan)
    lines = text.splitlines()
    assert lines[0].startswith("teacher forward compute") and "cache, mode exact" in lines[0]
    assert "3 epochs per job" in lines[0]
    assert lines[1].startswith("| teacher ") and "FLOP/token cached" in lines[1]
    assert set(lines[2]) <= set("|-: ")
    assert lines[3].startswith("| opt-6.7b ") and "|   24 |" in lines[3] and "959 G" in lines[3]
    assert "56.3 G" in lines[3] and "94%" in lines[3]
    assert lines[6].startswith("| all teachers ") and "|   60 |" in lines[6] and "|         180 |" in lines[6]
    assert lines[-2] == "" and "2·P" in lines[-1] and "2·d·V" in lines[-1]
    assert all(len(line) <= 110 for line in lines)


@pytest.mark.parametrize("mode", ["exact", "compact"])
def test_without_the_cache_cached_equals_live(tmp_path, mode):
    config = _config(PAPER, {"teacher_signal": {"cache": False, "mode": mode}})
    rows = teacher_compute(config, tmp_path)
    assert [r["jobs"] for r in rows] == [24, 24, 12]
    for row in rows:
        assert row["passes_cached"] == row["passes_live"]
        assert row["flop_cached"] == row["flop_live"]
        assert row["saving"] == 0
    from kdlm.job_plan import Plan

    plan = Plan(None, 80, signal=TeacherSignalConfig(cache=False), teacher_compute=rows)
    text = format_teacher_compute(plan)
    assert "cache false: cached = live" in text.splitlines()[0] and "2·d·V" not in text


def test_compact_mode_costs_only_the_cache_passes_and_the_live_rows(tmp_path):
    config = _config(PAPER, {"teacher_signal": {"mode": "compact"}})
    expected = _expected(config)
    for row in teacher_compute(config, tmp_path):
        passes = expected[row["teacher"]]["passes_cached"]
        assert row["flop_cached"] == pytest.approx(2 * row["parameters"] * passes)


def test_lab_teacher_compute_with_online_sources(tmp_path):
    """config.yaml: sources gt (6 teacher-loading methods) and, for fkl and atkd, teacher, student, mix_token
    and the two request mixes at mix.ratio 0.5; the lab teacher is planned from the config it will have."""
    config = _config()
    plan = plan_study(config)
    (row,) = plan.teacher_compute
    expected = _expected(config)["llama-teacher"]
    assert row["jobs"] == expected["jobs"] == 6 + 5 * 2
    assert row["passes_live"] == 3 * 16 == expected["passes_live"]
    # caches: gt, teacher (whole files), mix_request_teacher and mix_request_gt (their offline half);
    # live every epoch: student and mix_token (all rows), the request mixes' online half
    assert row["caches"] == expected["caches"] == 4
    assert row["passes_cached"] == pytest.approx(1 + 1 + 0.5 + 0.5 + 3 * (2 + 2 + 4 * 0.5)) == 21
    assert row["passes_cached"] == pytest.approx(expected["passes_cached"])
    shape = model_shape(_planning_ref(config, config["teachers"]["llama-teacher"]["path"], tmp_path))
    assert row["parameters"] == shape.parameters
    memory = next(r for r in plan.rows if r["job"] == "distill llama-student ← llama-teacher")
    assert row["parameters"] == round(memory["teacher_b"] * 1e9)  # the memory table's teacher
    forward, readout = 2 * shape.parameters, 2 * shape.hidden * shape.vocab
    assert row["flop_live"] == pytest.approx(48 * forward)
    # offline job-epochs: gt (6 jobs) and teacher (2) x 3 epochs, the request mixes 4 jobs x 3 x 0.5
    assert row["flop_cached"] == pytest.approx(21 * forward + (24 + 6) * readout)


def test_mix_ratio_and_seeds_change_the_shares(tmp_path):
    config = _config({"mix": {"ratio": 0.25}, "study": {"seeds": [0, 1]}, "training": {"epochs": 2}})
    (row,) = teacher_compute(config, tmp_path)
    expected = _expected(config)["llama-teacher"]
    assert row["jobs"] == 32 == expected["jobs"]
    assert row["passes_live"] == 64
    # the seeds share a file: still 4 caches, 3 of offline rows + 2 x 0.75 for the mixes
    assert row["caches"] == 4
    assert row["passes_cached"] == pytest.approx(1 + 1 + 0.75 + 0.75 + 2 * (4 + 4 + 8 * 0.25))
    assert row["passes_cached"] == pytest.approx(expected["passes_cached"])


def test_max_steps_counts_the_configured_epochs_and_says_so(tmp_path):
    config = _config(PAPER, {"training": {"max_steps": 100}})
    rows = teacher_compute(config, tmp_path)
    assert all(r["epochs"] == 3 and r["epochs_assumed"] for r in rows)
    from kdlm.job_plan import Plan

    text = format_teacher_compute(Plan(None, 80, teacher_compute=rows))
    assert "max_steps > 0: epochs assumed" in text.splitlines()[0]


def test_a_study_without_teacher_loading_jobs_has_zero_rows(tmp_path):
    config = _config({"study": {"sources": ["gt", "teacher"], "methods": ["sft"], "grids": []}})
    (row,) = teacher_compute(config, tmp_path)
    assert (row["jobs"], row["passes_live"], row["passes_cached"], row["flop_live"]) == (0, 0, 0, 0)
    assert row["saving"] is None
    text = format_teacher_compute(plan_study(config))
    assert "| llama-teacher |" in text and "|      - |" in text
