"""Figures of a study, written as PNGs for the report: scores with their intervals, training curves,
and ATKD's easy/hard token split over training.

A bar without its interval misleads as much as a table without one, so every score bar carries its 95%
bootstrap interval. matplotlib runs on the Agg backend: no display is needed on a cluster node.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdlm.io import atomic_path
from kdlm.schemas import TRAIN_LOG, read_table
from kdlm.study import EVAL_METRICS, RunId

ATKD_COLUMNS = ("atkd_threshold", "atkd_n_easy", "atkd_n_hard", "atkd_loss_easy", "atkd_loss_hard")
SCORE_METRICS = tuple(m.name for m in EVAL_METRICS)


def _pyplot():
    """pyplot on the Agg backend (no display on cluster nodes): the backend must be chosen before pyplot
    is first imported, so both imports happen here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)


def run_id(train_log: Path) -> str:
    """`<student>__<teacher>/<source>/<method>/seed<seed>` of a results/runs/<run>/train_log.parquet path."""
    parts = Path(train_log).parent.parts
    if "runs" in parts:
        start = len(parts) - parts[::-1].index("runs")
        return "/".join(parts[start:])
    return Path(train_log).parent.name


def plot_scores(summary, metric: str, out: Path) -> None:
    """Grouped bars: one group per task, one bar per model, error bars = 95% bootstrap interval."""

    plt = _pyplot()
    part = summary[summary["metric"] == metric]
    tasks = sorted(part["task"].unique())
    models = list(dict.fromkeys(part["model"]))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + len(tasks) * len(models) * 0.45), 4.0))
    colors = plt.get_cmap("tab10")
    for i, model in enumerate(models):
        rows = part[part["model"] == model].set_index("task").reindex(tasks)
        x = np.arange(len(tasks)) + (i - (len(models) - 1) / 2) * width
        err = np.vstack([rows["value"] - rows["ci_low"], rows["ci_high"] - rows["value"]]).clip(min=0)
        ax.bar(x, rows["value"], width, yerr=err, capsize=3, label=model, color=colors(i % 10))
    ax.set_xticks(np.arange(len(tasks)), tasks)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per task (95% bootstrap CI)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    _save(fig, out)


def _read_logs(train_logs: list[Path]) -> dict[str, object]:
    return {run_id(path): read_table(path, TRAIN_LOG) for path in train_logs}


def _by_source(logs: dict) -> dict[str, list[tuple[str, object]]]:
    groups: dict[str, list[tuple[str, object]]] = {}
    for run, df in sorted(logs.items()):
        match = RunId.search(run)
        source = match.source if match else ""
        label = f"{match.method} seed{match.seed} ({match.student}←{match.teacher})" if match else run
        groups.setdefault(source, []).append((label, df))
    return groups


def _placeholder(out: Path, text: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    _save(fig, out)


def plot_train_loss(logs: dict, out: Path) -> None:
    """Training loss over steps, one panel per source, one line per run labelled by method and seed."""
    if not logs:
        _placeholder(out, "no training logs given")
        return
    plt = _pyplot()
    groups = _by_source(logs)
    fig, axes = plt.subplots(1, len(groups), figsize=(5.0 * len(groups), 3.6), squeeze=False)
    for ax, (source, runs) in zip(axes[0], groups.items(), strict=True):
        for label, df in runs:
            ax.plot(df["step"], df["loss"], marker=".", label=label)
        ax.set_title(f"source: {source}" if source else "runs")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("training loss per method (each method's own loss: scales differ between losses)", fontsize=9)
    _save(fig, out)


def plot_atkd(logs: dict, out: Path) -> bool:
    """ATKD's per-batch split: uncertainty threshold, hard-token share, easy vs hard loss over steps.

    Returns:
        False (and a PNG that says so) when no train log has the `atkd_*` columns.
    """
    atkd = {run: df for run, df in logs.items() if all(c in df.columns for c in ATKD_COLUMNS)}
    if not atkd:
        _placeholder(out, "no ATKD run in this study\n(no train log has the atkd_* columns)")
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for run, df in sorted(atkd.items()):
        share = df["atkd_n_hard"] / (df["atkd_n_easy"] + df["atkd_n_hard"]).where(lambda s: s > 0)
        axes[0].plot(df["step"], df["atkd_threshold"], label=run)
        axes[1].plot(df["step"], share, label=run)
        line = axes[2].plot(df["step"], df["atkd_loss_hard"], label=f"{run} hard")[0]
        axes[2].plot(df["step"], df["atkd_loss_easy"], "--", color=line.get_color(), label=f"{run} easy")
    for ax, title in zip(axes, ["uncertainty threshold (median)", "hard-token share", "loss: hard (—) vs easy (--)"],
                         strict=True):  # fmt: skip
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[1].set_ylim(0, 1)
    axes[2].legend(fontsize=6)
    _save(fig, out)
    return True


def write_plots(summary, train_logs: list[Path], plots_dir: Path) -> list[str]:
    """Every figure of the report into `plots_dir`: scores_<metric>.png (each metric of the summary,
    `judge` included when judged), train_loss.png, atkd.png.

    Returns:
        Notes for the log (e.g. that the ATKD figure was skipped).
    """
    notes = []
    for metric in dict.fromkeys([*SCORE_METRICS, *summary["metric"].unique()]):
        plot_scores(summary, metric, Path(plots_dir) / f"scores_{metric}.png")
    logs = _read_logs(train_logs)
    plot_train_loss(logs, Path(plots_dir) / "train_loss.png")
    if not plot_atkd(logs, Path(plots_dir) / "atkd.png"):
        notes.append("atkd.png: skipped, no train log has the atkd_* columns (no ATKD run)")
    return notes
