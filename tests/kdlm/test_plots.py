"""The report's figures, rendered with real matplotlib (Agg): one colour per method in every figure, score
bars grouped by source with seeds averaged, reference models as lines, and legends clear of the data."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from kdlm.plots import (
    METHOD_COLORS,
    _atkd_figure,
    _pyplot,
    _scores_figure,
    _train_loss_figure,
    aggregate_seeds,
    method_color,
    plot_scores,
    write_plots,
)
from kdlm.schemas import TRAIN_LOG, write_table

USUAL = ["fkl", "rkl", "jsd", "gjsd", "dkd", "tvd", "skl", "srkl", "akl", "atkd", "sft", "atkd_l0", "atkd_l05",
         "atkd_l1"]  # fmt: skip
# (source, method, teacher) of the runs of one (student, teacher) pair; sft on gt has no teacher
RUNS = [("gt", "fkl", "t"), ("gt", "rkl", "t"), ("gt", "atkd", "t"), ("gt", "sft", "none"),
        ("teacher", "fkl", "t"), ("teacher", "atkd", "t")]  # fmt: skip
TEACHER, BASE = 0.8, 0.1


def _row(kind: str, student: str, teacher: str, source: str, method: str, value: float, seed: int = 0,
         task: str = "lab_test", metric: str = "rouge_l") -> dict:  # fmt: skip
    run = f"{student}__{teacher}/{source}/{method}/seed{seed}"
    model = {"teacher": f"teacher/{teacher}", "base": f"base/{student}"}.get(kind, run)
    return {"kind": kind, "model": model, "student": student, "teacher": teacher, "source": source, "method": method,
            "seed": seed, "task": task, "metric": metric, "value": value, "ci_low": value - 0.05,
            "ci_high": value + 0.05, "n": 100}  # fmt: skip


def _summary(seeds=(0, 1), tasks=("lab_test",)) -> pd.DataFrame:
    """Per-seed rows: seed s of run i scores 0.2 + 0.05 i + 0.02 s; one teacher and one base row."""
    rows = []
    for task in tasks:
        rows += [_row("teacher", "", "t", "", "", TEACHER, task=task), _row("base", "s", "", "", "", BASE, task=task)]
        rows += [_row("run", "s", teacher, source, method, 0.2 + 0.05 * i + 0.02 * seed, seed, task)
                 for i, (source, method, teacher) in enumerate(RUNS) for seed in seeds]  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    _pyplot().close("all")


def _bars(fig) -> list:
    return [p for ax in fig.axes for p in ax.patches if p.get_gid()]


def _assert_legend_clear(fig) -> None:
    """No legend box overlaps a panel or its labels (tick labels, reference labels, title)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert fig.legends, "the figure has no legend"
    for legend in fig.legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            if ax.axison:
                assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()
                assert not box.overlaps(ax.get_tightbbox(renderer)), ax.get_title()


# ------------------------------------------------------------------------------------------ colours


def test_usual_methods_have_fixed_distinct_colors():
    colors = [method_color(m) for m in USUAL]
    assert len(set(colors)) == len(USUAL)
    assert colors == [method_color(m) for m in USUAL] == [METHOD_COLORS[m] for m in USUAL]


def test_other_methods_get_a_stable_color_across_processes():
    """Python's str hash is salted per process; the colour must not be."""
    here = method_color("my_new_loss")
    code = "from kdlm.plots import method_color; print(method_color('my_new_loss'))"
    for salt in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": salt}).stdout.strip()  # fmt: skip
        assert out == here
    assert here not in METHOD_COLORS.values()


def test_other_methods_of_one_study_get_distinct_spare_colors():
    study = ["fkl", "zeta", "alpha", "mid"]
    colors = {m: method_color(m, study) for m in study}
    assert len(set(colors.values())) == 4
    assert colors["fkl"] == METHOD_COLORS["fkl"]
    assert not {colors[m] for m in ("zeta", "alpha", "mid")} & set(METHOD_COLORS.values())
    assert colors == {m: method_color(m, list(reversed(study))) for m in study}  # order of the list: no matter


# ------------------------------------------------------------------------------------------- scores


def test_scores_bars_one_color_per_method_and_grouped_by_source():
    fig = _scores_figure(_summary(seeds=(0,)), "rouge_l")
    bars = _bars(fig)
    assert [b.get_gid() for b in bars] == [f"{source}|{method}" for source, method, _ in RUNS]
    by_method: dict[str, set] = {}
    for bar in bars:
        by_method.setdefault(bar.get_gid().split("|")[1], set()).add(bar.get_facecolor())
    assert all(len(colors) == 1 for colors in by_method.values()), by_method
    assert len({next(iter(c)) for c in by_method.values()}) == len(by_method)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fkl", "rkl", "atkd", "sft", "fkl", "atkd"]
    assert "95% bootstrap interval" in fig.get_suptitle()


def test_scores_reference_models_are_lines_not_bars():
    fig = _scores_figure(_summary(seeds=(0,)), "rouge_l")
    ax = fig.axes[0]
    assert not any("teacher/" in (b.get_gid() or "") or "base/" in (b.get_gid() or "") for b in _bars(fig))
    horizontal = {(round(line.get_ydata()[0], 6), line.get_linestyle()) for line in ax.lines
                  if len(set(line.get_ydata())) == 1 and list(line.get_xdata()) == [0, 1]}  # fmt: skip
    assert (TEACHER, "-") in horizontal
    assert (BASE, ":") in horizontal


def test_scores_legend_is_outside_the_panels():
    _assert_legend_clear(_scores_figure(_summary(tasks=("t1", "t2")), "rouge_l"))


def test_per_seed_rows_are_averaged_and_the_title_says_so():
    summary = _summary(seeds=(0, 1, 2))
    fig = _scores_figure(summary, "rouge_l")
    bars = _bars(fig)
    assert len(bars) == len(RUNS) < len(summary[summary["kind"] == "run"])
    heights = {b.get_gid(): b.get_height() for b in bars}
    assert heights["gt|fkl"] == pytest.approx(0.2 + 0.02)  # mean of seeds 0, 1, 2
    assert heights["teacher|atkd"] == pytest.approx(0.2 + 0.05 * 5 + 0.02)
    assert "mean over 3 seeds" in fig.get_suptitle()


def test_aggregated_rows_pass_through_with_their_interval():
    agg = _summary(seeds=(0,)).drop(columns="seed").assign(n_seeds=3)
    rows, note = aggregate_seeds(agg)
    assert len(rows) == len(agg)
    assert rows["ci_low"].tolist() == pytest.approx(agg["ci_low"].tolist())
    assert note == "95% interval; mean over 3 seeds"
    assert "(95% interval; mean over 3 seeds)" in _scores_figure(agg, "rouge_l").get_suptitle()


def test_teacherless_runs_join_every_pair_of_their_student():
    second = _summary(seeds=(0,)).assign(teacher=lambda d: d["teacher"].replace({"t": "u"}))
    summary = pd.concat([_summary(seeds=(0,)), second[second["teacher"] != "none"]])
    fig = _scores_figure(summary, "rouge_l")
    titles = [ax.get_title() for ax in fig.axes if ax.axison and ax.get_title()]
    assert titles == ["lab_test: s ← t", "lab_test: s ← u"]
    panels = [ax for ax in fig.axes if ax.get_title() in titles]
    assert all(sum(p.get_gid() == "gt|sft" for p in ax.patches) == 1 for ax in panels)


def test_plot_scores_writes_a_png_or_a_placeholder(tmp_path):
    plot_scores(_summary(), "rouge_l", tmp_path / "a.png")
    plot_scores(_summary(), "judge", tmp_path / "b.png")  # no judge rows: a figure that says so
    for name in ("a.png", "b.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------- train logs


def _log(scale: float, atkd: bool = False) -> pd.DataFrame:
    df = pd.DataFrame({"step": [1, 20, 40], "epoch": [0.1, 0.5, 1.0], "loss": [scale * 3, scale * 2, scale],
                       "lr": [1e-3] * 3, "grad_norm": [1.0] * 3, "tokens_per_s": [100.0] * 3})  # fmt: skip
    if atkd:
        df = df.assign(atkd_threshold=[0.6, 0.5, 0.4], atkd_n_easy=[50, 50, 60], atkd_n_hard=[50, 50, 40],
                       atkd_loss_easy=[1.0, 0.8, 0.6], atkd_loss_hard=[4.0, 3.0, 2.5])  # fmt: skip
    return df


LOGS = {
    "s__t/gt/fkl/seed0": _log(1.0),
    "s__t/gt/fkl/seed1": _log(1.1),
    "s__t/gt/atkd/seed0": _log(1.2, atkd=True),
    "s__none/gt/sft/seed0": _log(1.3),
    "s__t/teacher/fkl/seed0": _log(0.9),
    "s__t/teacher/atkd/seed0": _log(1.4, atkd=True),
}


def _lines(fig) -> dict[tuple[str, str], object]:
    return {(ax.get_title(), line.get_gid()): line for ax in fig.axes for line in ax.lines if line.get_gid()}


def test_train_loss_panels_per_source_color_per_method_style_per_seed():
    fig = _train_loss_figure(LOGS)
    lines = _lines(fig)
    assert {title for title, _ in lines} == {"source: gt", "source: teacher"}
    seed0, seed1 = lines[("source: gt", "s__t/gt/fkl/seed0")], lines[("source: gt", "s__t/gt/fkl/seed1")]
    assert seed0.get_color() == seed1.get_color() == METHOD_COLORS["fkl"]
    assert seed0.get_linestyle() == "-" and seed1.get_linestyle() == "--"
    assert lines[("source: gt", "s__t/gt/atkd/seed0")].get_color() == METHOD_COLORS["atkd"]
    assert lines[("source: gt", "s__none/gt/sft/seed0")].get_color() == METHOD_COLORS["sft"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["fkl", "atkd", "sft", "seed 0", "seed 1"]
    _assert_legend_clear(fig)


def test_atkd_short_labels_and_legend_below_the_panels():
    fig = _atkd_figure(LOGS)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["gt / atkd", "teacher / atkd"]
    assert {line.get_gid() for ax in fig.axes for line in ax.lines} == {"s__t/gt/atkd/seed0", "s__t/teacher/atkd/seed0"}
    _assert_legend_clear(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert fig.legends[0].get_window_extent(renderer).y1 <= min(ax.get_window_extent(renderer).y0 for ax in fig.axes)
    assert _atkd_figure({"s__t/gt/fkl/seed0": _log(1.0)}) is None


def test_write_plots_from_train_log_files(tmp_path):
    paths = []
    for run, df in LOGS.items():
        path = tmp_path / "runs" / run / "train_log.parquet"
        write_table(df, path, TRAIN_LOG, extra_columns=True)
        paths.append(path)
    notes = write_plots(_summary(), paths, tmp_path / "plots")
    names = {p.name for p in (tmp_path / "plots").iterdir()}
    assert {"train_loss.png", "atkd.png", "scores_rouge_l.png", "scores_exact_match.png"} <= names
    assert notes == []
