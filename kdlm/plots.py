"""Figures of a study, written as PNGs for the report: scores with their intervals, training curves,
and ATKD's easy/hard token split over training.

A bar without its interval misleads as much as a table without one, so every score bar carries its 95%
interval. A reader compares methods across figures, so each method keeps one colour everywhere
(`method_color`), labels are method and source names rather than run ids, and legends sit outside the
data. matplotlib runs on the Agg backend: no display is needed on a cluster node.
"""

from __future__ import annotations

import colorsys
import hashlib
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdlm.io import atomic_path
from kdlm.schemas import TRAIN_LOG, read_table
from kdlm.study import EVAL_METRICS, METRICS, RunId

ATKD_COLUMNS = ("atkd_threshold", "atkd_n_easy", "atkd_n_hard", "atkd_loss_easy", "atkd_loss_hard")
SCORE_METRICS = tuple(m.name for m in EVAL_METRICS)

# The study's usual methods, in the order bars and legends list them. Variants of one family share a hue
# (skl/srkl lighter than fkl/rkl, gjsd lighter than jsd, the ATKD λ sweep in shades of ATKD's red from
# λ = 0 light to λ = 1 dark), so a reader sees families before individual names.
METHOD_COLORS: dict[str, str] = {
    "fkl": "#1f77b4",
    "skl": "#aec7e8",
    "rkl": "#ff7f0e",
    "srkl": "#ffbb78",
    "jsd": "#2ca02c",
    "gjsd": "#98df8a",
    "tvd": "#8c564b",
    "akl": "#17becf",
    "dkd": "#9467bd",
    "atkd": "#d62728",
    "atkd_l0": "#ff9896",
    "atkd_l05": "#b0306a",
    "atkd_l1": "#67000d",
    "sft": "#7f7f7f",
}
# The study's sample sources (kdlm.study.SOURCES), for figures coloured by source (ATKD's).
SOURCE_COLORS: dict[str, str] = {
    "gt": "#1b9e77",
    "teacher": "#d95f02",
    "student": "#7570b3",
    "mix_token": "#e7298a",
    "mix_request_teacher": "#66a61e",
    "mix_request_gt": "#e6ab02",
}
# Colours for names outside the fixed tables, handed out in name order when the figure's full list of
# names is known; none is close to a fixed entry.
_SPARE_COLORS = ("#bcbd22", "#393b79", "#e377c2", "#637939", "#8c6d31", "#7b4173", "#006d6d", "#e7ba52",
                 "#6b6ecf", "#222222")  # fmt: skip
# line style per seed (by rank among the figure's seeds): solid, dashed, dotted, dash-dot, then dash patterns
SEED_STYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)), (0, (1, 3)))
TEACHER_STYLE = {"color": "black", "linestyle": "-", "linewidth": 1.2}
BASE_STYLE = {"color": "#555555", "linestyle": ":", "linewidth": 1.6}
NO_TEACHER = "none"


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


# ------------------------------------------------------------------------------------------ colours


def _hashed_color(name: str) -> str:
    """A colour fixed by the name alone (sha1, not Python's per-process salted `hash`), mid lightness so
    it reads on white."""
    digest = int.from_bytes(hashlib.sha1(name.encode()).digest()[:4], "big")
    hue, lightness, saturation = (digest % 360) / 360, 0.40 + (digest >> 9) % 3 * 0.08, 0.65
    return "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in colorsys.hls_to_rgb(hue, lightness, saturation)))


def _named_color(name: str, fixed: dict[str, str], names: Sequence[str] | None) -> str:
    if name in fixed:
        return fixed[name]
    others = sorted({n for n in names or () if n not in fixed})
    if name in others and others.index(name) < len(_SPARE_COLORS):
        return _SPARE_COLORS[others.index(name)]
    return _hashed_color(name)


def method_color(method: str, methods: Sequence[str] | None = None) -> str:
    """The colour of `method` in every figure: fixed for the study's usual methods (METHOD_COLORS); any
    other name gets a spare palette colour by its rank among the other names of `methods` (pass the
    study's whole method list so that the colour is the same in every figure), else one fixed by a hash
    of the name."""
    return _named_color(method, METHOD_COLORS, methods)


def source_color(source: str, sources: Sequence[str] | None = None) -> str:
    """The colour of a sample source, for figures where the sources are what differs (ATKD's)."""
    return _named_color(source, SOURCE_COLORS, sources)


def _method_order(methods: Iterable[str]) -> list[str]:
    """Usual methods in METHOD_COLORS order, then the others in order of first appearance."""
    seen = list(dict.fromkeys(methods))
    known = list(METHOD_COLORS)
    return sorted(seen, key=lambda m: (known.index(m), 0) if m in known else (len(known), seen.index(m)))


def _wrap(label: str, width: int = 13) -> str:
    """Break long source names (mix_request_teacher) after underscores so group labels stay narrow."""
    if len(label) <= width:
        return label
    return "\n".join(textwrap.wrap(label.replace("_", "_ "), width=width, break_long_words=False)).replace("_ ", "_")


def _seed_styles(seeds: Iterable[int]) -> dict[int, Any]:
    """Line style per seed: the lowest seed solid, the next dashed, then dotted, ..."""
    return {seed: SEED_STYLES[i % len(SEED_STYLES)] for i, seed in enumerate(sorted(set(seeds)))}


def _count_text(counts: Iterable[int]) -> str:
    counts = sorted(set(counts))
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


# ------------------------------------------------------------------------------------------- scores

SCORE_KEY = ("kind", "student", "teacher", "source", "method", "task", "metric")


def aggregate_seeds(part: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """One row per (kind, student, teacher, source, method, task, metric) with its n_seeds, and the
    title's note on what the whiskers mean.

    Rows the caller aggregated already (an `n_seeds` column, one row per key) pass through: their interval
    is the caller's. Several rows of one key (a per-seed summary) are averaged here; their whiskers then
    span the lowest to the highest of the seeds' own 95% intervals, which the note says.
    """
    df = part.copy()
    for col in SCORE_KEY:
        df[col] = df[col].fillna("").astype(str) if col in df.columns else ""
    if "n_seeds" not in df.columns:
        df["n_seeds"] = 1
    df["n_seeds"] = pd.to_numeric(df["n_seeds"], errors="coerce").fillna(1).astype(int)
    grouped = df.groupby(list(SCORE_KEY), sort=False, dropna=False)
    out = grouped.agg(value=("value", "mean"), ci_low=("ci_low", "min"), ci_high=("ci_high", "max"),
                      n_seeds=("n_seeds", "sum"), rows=("value", "size")).reset_index()  # fmt: skip
    runs = out[out["kind"] == "run"]
    n_text = _count_text(runs["n_seeds"]) if len(runs) else "1"
    if (out["rows"] > 1).any():
        note = f"mean over {n_text} seeds; whiskers: lowest to highest of the seeds' 95% intervals"
    elif len(runs) and runs["n_seeds"].max() > 1:
        note = f"95% interval; mean over {n_text} seeds"
    else:
        note = "95% bootstrap interval"
    return out.drop(columns="rows"), note


def _pairs(agg: pd.DataFrame) -> list[tuple[str, str]]:
    """(student, teacher) pairs of the runs; a student whose runs all lack a teacher is its own pair."""
    runs = agg[agg["kind"] == "run"]
    pairs = list(dict.fromkeys(zip(runs["student"], runs["teacher"], strict=True)))
    with_teacher = [p for p in pairs if p[1] != NO_TEACHER]
    alone = [p for p in pairs if p[1] == NO_TEACHER and p[0] not in {s for s, _ in with_teacher}]
    return with_teacher + alone


def _panel_rows(agg: pd.DataFrame, pair: tuple[str, str] | None, task: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs and reference models (teacher, base) of one panel; teacher-less runs join every pair of their
    student."""
    rows = agg[agg["task"] == task]
    runs, refs = rows[rows["kind"] == "run"], rows[rows["kind"] != "run"]
    if pair is None:
        return runs, refs
    student, teacher = pair
    runs = runs[(runs["student"] == student) & runs["teacher"].isin([teacher, NO_TEACHER])]
    refs = refs[((refs["kind"] == "teacher") & (refs["teacher"] == teacher))
                | ((refs["kind"] == "base") & (refs["student"] == student))
                | ~refs["kind"].isin(["teacher", "base"])]  # fmt: skip
    return runs, refs


def _ref_label(row, refs: pd.DataFrame) -> str:
    kind = row["kind"]
    name = row["teacher"] if kind == "teacher" else row["student"]
    same_kind = refs[refs["kind"] == kind]
    return kind if len(same_kind) <= 1 or not name else f"{kind} {name}"


def _draw_score_panel(ax, runs: pd.DataFrame, refs: pd.DataFrame, metric: str, methods: Sequence[str]) -> None:
    """Bars grouped by source (first appearance), one per method; reference models as horizontal lines
    labelled on a right-hand axis, so neither label nor legend covers a bar."""
    digits = METRICS[metric].digits if metric in METRICS else 3
    ticks, tick_labels, centers, bounds = [], [], [], []
    x = 0.0
    for source in dict.fromkeys(runs["source"]):
        group = runs[runs["source"] == source]
        order = _method_order(group["method"])
        group = group.assign(_order=group["method"].map(order.index)).sort_values(["_order", "teacher"], kind="stable")
        xs = x + np.arange(len(group))
        values = group["value"].to_numpy(float)
        err = np.vstack([values - group["ci_low"].to_numpy(float), group["ci_high"].to_numpy(float) - values])
        err = np.nan_to_num(err.clip(min=0))
        bars = ax.bar(xs, values, 0.8, yerr=err, color=[method_color(m, methods) for m in group["method"]],
                      error_kw={"elinewidth": 0.9, "capsize": 2.5, "ecolor": "#333333"}, zorder=3)  # fmt: skip
        duplicated = group["method"].duplicated(keep=False)
        for bar, (_, row), dup in zip(bars, group.iterrows(), duplicated, strict=True):
            bar.set_gid(f"{source}|{row['method']}")
            tick_labels.append(f"{row['method']} ({row['teacher']})" if dup else row["method"])
            if np.isnan(row["value"]):
                ax.text(bar.get_x() + 0.4, 0, "n/a", ha="center", va="bottom", fontsize=6, rotation=90)
        ticks += list(xs)
        centers.append(float(xs.mean()))
        bounds.append((float(xs[0]) - 0.5, float(xs[-1]) + 0.5))
        x = float(xs[-1]) + 1.8
    for (_, right), (left, _) in zip(bounds, bounds[1:], strict=False):
        ax.axvline((right + left) / 2, color="#cccccc", linewidth=0.8, zorder=1)
    longest = max((len(t) for t in tick_labels), default=0)
    upright = longest <= 5  # fits under a bar (~0.35 in) unrotated; longer names turn vertical
    ax.set_xticks(ticks, tick_labels, rotation=0 if upright else 90, fontsize=7)
    ax.tick_params(axis="x", length=2, pad=2)
    if bounds:
        ax.set_xlim(bounds[0][0] - 0.3, bounds[-1][1] + 0.3)
        sources = ax.secondary_xaxis("bottom")  # group labels one row below the method labels
        sources.set_ticks(centers, [_wrap(s) for s in dict.fromkeys(runs["source"])])
        sources.tick_params(axis="x", length=0, pad=16 if upright else 4.6 * longest + 10, labelsize=8)
        for label in sources.get_xticklabels():
            label.set_fontweight("bold")
        sources.spines["bottom"].set_visible(False)
    else:
        ax.set_xticks([])
    ref_ticks = []
    for _, row in refs.iterrows():
        style = TEACHER_STYLE if row["kind"] == "teacher" else BASE_STYLE
        ax.axhline(row["value"], zorder=4, **style)
        if np.isfinite(row["ci_low"]) and np.isfinite(row["ci_high"]) and row["ci_high"] > row["ci_low"]:
            ax.axhspan(row["ci_low"], row["ci_high"], color=style["color"], alpha=0.07, zorder=0, linewidth=0)
        ref_ticks.append((float(row["value"]), f"{_ref_label(row, refs)} {row['value']:.{digits}f}"))
    values = [*runs["ci_high"], *runs["value"], *refs["ci_high"], *refs["value"]]
    finite = [v for v in values if np.isfinite(v)]
    low = min([0.0, *(v for v in [*runs["ci_low"], *refs["ci_low"]] if np.isfinite(v))])
    top = max(finite, default=1.0)
    ax.set_ylim(low, top + 0.08 * (top - low) if top > low else low + 1)
    if ref_ticks:
        _reference_axis(ax, ref_ticks)
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3, zorder=0)


def _reference_axis(ax, ticks: list[tuple[float, str]]) -> None:
    """Labels of the reference lines on a right-hand axis at their values (part of the axes' layout, so
    never over the bars); labels closer than 6% of the y range are merged into one."""
    low, high = ax.get_ylim()
    merged: list[tuple[float, str]] = []
    for value, label in sorted(ticks):
        if merged and abs(value - merged[-1][0]) < 0.06 * (high - low):
            merged[-1] = (merged[-1][0], f"{merged[-1][1]} / {label}")
        else:
            merged.append((value, label))
    refs = ax.secondary_yaxis("right")
    refs.set_ticks([v for v, _ in merged], [t for _, t in merged])
    refs.tick_params(axis="y", labelsize=7, length=3)


def _score_panels(agg: pd.DataFrame) -> list[tuple[tuple[str, str] | None, str]]:
    pairs: list[tuple[str, str] | None] = list(_pairs(agg)) or [None]
    tasks = list(dict.fromkeys(agg["task"]))
    return [(pair, task) for pair in pairs for task in tasks]


def _panel_title(pair: tuple[str, str] | None, task: str) -> str:
    if pair is None:
        return task
    student, teacher = pair
    return f"{task}: {student} ← {teacher}" if teacher != NO_TEACHER else f"{task}: {student} (no teacher)"


def _scores_figure(summary: pd.DataFrame, metric: str, methods: Sequence[str] | None = None):
    """The scores figure of one metric (None when the summary has no row of it); see `plot_scores`."""
    part = summary[summary["metric"] == metric]
    if part.empty:
        return None
    agg, note = aggregate_seeds(part)
    methods = list(methods or ()) + list(agg.loc[agg["kind"] == "run", "method"])
    panels = _score_panels(agg)
    contents = [_panel_rows(agg, pair, task) for pair, task in panels]
    n_bars = max((len(runs) for runs, _ in contents), default=1)
    n_groups = max((runs["source"].nunique() for runs, _ in contents), default=1)
    width = 2.0 + 0.32 * n_bars + 0.3 * n_groups
    ncols = max(1, min(len(panels), int(15 // width)))
    nrows = -(-len(panels) // ncols)
    plt = _pyplot()
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols + 1.6, 4.6 * nrows), squeeze=False,
                             layout="constrained")  # fmt: skip
    for ax, (pair, task), (runs, refs) in zip(axes.flat, panels, contents, strict=False):
        _draw_score_panel(ax, runs, refs, metric, methods)
        ax.set_title(_panel_title(pair, task), fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    shown = _method_order(agg.loc[agg["kind"] == "run", "method"])
    handles: list[Any] = [Patch(color=method_color(m, methods), label=m) for m in shown]
    kinds = set(agg["kind"])
    handles += [Line2D([], [], label=kind, **style) for kind, style in
                (("teacher", TEACHER_STYLE), ("base", BASE_STYLE)) if kind in kinds]  # fmt: skip
    if handles:
        fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(f"{metric} by training source ({note})", fontsize=10)
    return fig


def plot_scores(summary: pd.DataFrame, metric: str, out: Path, methods: Sequence[str] | None = None) -> None:
    """Bars of `metric` grouped by training source, one per method coloured by `method_color`, whiskers =
    the rows' 95% interval; teacher (solid) and untrained base student (dotted) as horizontal lines; one
    panel per task and (student, teacher) pair. Per-seed rows are averaged (see `aggregate_seeds`)."""
    fig = _scores_figure(summary, metric, methods)
    if fig is None:
        _placeholder(out, f"no {metric} scores in this summary")
        return
    _save(fig, out)


# --------------------------------------------------------------------------------------- train logs


def _read_logs(train_logs: list[Path]) -> dict[str, object]:
    return {run_id(path): read_table(path, TRAIN_LOG) for path in train_logs}


def _parse_runs(logs: dict) -> list[tuple[str, RunId | None, pd.DataFrame]]:
    return [(run, RunId.search(run), df) for run, df in sorted(logs.items())]


def _run_panels(parsed: list[tuple[str, RunId | None, Any]]) -> dict[tuple[tuple[str, str] | None, str], list]:
    """Runs per (pair, source) panel; the pair is only part of the key when the study has several, and
    teacher-less runs join every pair of their student."""
    ids = [rid for _, rid, _ in parsed if rid]
    pairs = list(dict.fromkeys((r.student, r.teacher) for r in ids if r.teacher != NO_TEACHER))
    several = len({*pairs, *((r.student, r.teacher) for r in ids if r.student not in {s for s, _ in pairs})}) > 1
    panels: dict[tuple[tuple[str, str] | None, str], list] = {}
    for item in parsed:
        rid = item[1]
        if rid is None:
            panels.setdefault((None, ""), []).append(item)
            continue
        own = [p for p in pairs if p[0] == rid.student] if rid.teacher == NO_TEACHER else [(rid.student, rid.teacher)]
        for pair in own or [(rid.student, rid.teacher)]:
            panels.setdefault((pair if several else None, rid.source), []).append(item)
    return panels


def _figure_legend(fig, color_handles: list, seeds: Sequence[int], loc: str, ncol: int = 1) -> None:
    """One legend for the whole figure, outside the panels: a colour per line group, then (when there are
    several seeds) a line style per seed."""
    from matplotlib.lines import Line2D

    handles = list(color_handles)
    if len(set(seeds)) > 1:
        handles += [Line2D([], [], color="black", linestyle=style, label=f"seed {seed}")
                    for seed, style in _seed_styles(seeds).items()]  # fmt: skip
    fig.legend(handles=handles, loc=loc, fontsize=8, frameon=False, ncol=ncol)


def _log_axis(ax) -> None:
    """Log y scale (losses of different methods span decades) with plain-number ticks at 1-2-5 steps."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _train_loss_figure(logs: dict, methods: Sequence[str] | None = None):
    """The training-loss figure (see `plot_train_loss`)."""
    from matplotlib.lines import Line2D

    parsed = _parse_runs(logs)
    methods = list(methods or ()) + [rid.method for _, rid, _ in parsed if rid]
    seeds = [rid.seed for _, rid, _ in parsed if rid] or [0]
    styles = _seed_styles(seeds)
    panels = _run_panels(parsed)
    ncols = min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    plt = _pyplot()
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 1.4, 3.4 * nrows), squeeze=False,
                             layout="constrained")  # fmt: skip
    shown: list[str] = []
    for ax, ((pair, source), runs) in zip(axes.flat, panels.items(), strict=False):
        for run, rid, df in runs:
            method = rid.method if rid else run
            line = ax.plot(df["step"], df["loss"], color=method_color(method, methods),
                           linestyle=styles[rid.seed] if rid else "-", linewidth=1.4)[0]  # fmt: skip
            line.set_gid(run)
            shown.append(method)
        losses = pd.concat([df["loss"] for _, _, df in runs]).to_numpy(float)
        losses = losses[np.isfinite(losses)]
        if len(losses) and losses.min() > 0 and losses.max() / losses.min() > 10:
            _log_axis(ax)
        title = f"source: {source}" if source else "runs"
        if pair is not None:
            title += f"\n{pair[0]} ← {pair[1]}" if pair[1] != NO_TEACHER else f"\n{pair[0]} (no teacher)"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("training loss" + (" (log)" if ax.get_yscale() == "log" else ""), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.grid(alpha=0.1, which="minor")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [Line2D([], [], color=method_color(m, methods), linewidth=2, label=m) for m in _method_order(shown)]
    _figure_legend(fig, handles, seeds, loc="outside right upper")
    fig.suptitle("training loss per source (each method's own loss: levels compare only within a method)",
                 fontsize=10)  # fmt: skip
    return fig


def _placeholder(out: Path, text: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    _save(fig, out)


def plot_train_loss(logs: dict, out: Path, methods: Sequence[str] | None = None) -> None:
    """Training loss over steps: one panel per source (and per student ← teacher pair when there are
    several), colour = method (`method_color`), line style = seed; one legend outside the panels."""
    if not logs:
        _placeholder(out, "no training logs given")
        return
    _save(_train_loss_figure(logs, methods), out)


# --------------------------------------------------------------------------------------------- ATKD

ATKD_PANELS = (
    ("atkd_threshold", "uncertainty threshold (median)"),
    ("hard_share", "hard-token share"),
    ("atkd_loss_hard", "loss on hard tokens"),
    ("atkd_loss_easy", "loss on easy tokens"),
)


def _atkd_figure(logs: dict, methods: Sequence[str] | None = None):
    """The ATKD figure (see `plot_atkd`), None when no log has the atkd_* columns."""
    from matplotlib.lines import Line2D

    atkd = {run: df for run, df in logs.items() if all(c in df.columns for c in ATKD_COLUMNS)}
    if not atkd:
        return None
    parsed = _parse_runs(atkd)
    ids = [rid for _, rid, _ in parsed if rid]
    seeds = [r.seed for r in ids] or [0]
    styles = _seed_styles(seeds)
    several_pairs = len({(r.student, r.teacher) for r in ids}) > 1
    all_methods = list(methods or ()) + [r.method for r in ids]
    sources = list(dict.fromkeys(r.source for r in ids))

    def key(run: str, rid: RunId | None) -> str:
        if rid is None:
            return run
        pair = f"{rid.student} ← {rid.teacher}: " if several_pairs else ""
        return f"{pair}{rid.source} / {rid.method}"

    keys = list(dict.fromkeys(key(run, rid) for run, rid, _ in parsed))
    one_method = len({r.method for r in ids}) <= 1

    def color(run: str, rid: RunId | None) -> str:
        if rid is None:
            return _hashed_color(run)
        if one_method:  # the sources are what differ
            return source_color(rid.source, sources)
        if len(sources) <= 1:
            return method_color(rid.method, all_methods)
        index = keys.index(key(run, rid))  # sources and methods both differ: one colour per combination
        return _SPARE_COLORS[index] if len(keys) <= len(_SPARE_COLORS) else _hashed_color(key(run, rid))

    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.4), sharex=True, layout="constrained")
    colors: dict[str, str] = {}
    for run, rid, df in parsed:
        total = (df["atkd_n_easy"] + df["atkd_n_hard"]).where(lambda s: s > 0)
        series = {**{c: df[c] for c in ATKD_COLUMNS}, "hard_share": df["atkd_n_hard"] / total}
        colors[key(run, rid)] = color(run, rid)
        for ax, (column, _) in zip(axes.flat, ATKD_PANELS, strict=True):
            line = ax.plot(df["step"], series[column], color=colors[key(run, rid)], linewidth=1.4,
                           linestyle=styles[rid.seed] if rid else "-")[0]  # fmt: skip
            line.set_gid(run)
    for ax, (column, title) in zip(axes.flat, ATKD_PANELS, strict=True):
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        if column == "hard_share":
            ax.set_ylim(0, 1)
    for ax in axes[1]:
        ax.set_xlabel("step", fontsize=8)
    handles = [Line2D([], [], color=c, linewidth=2, label=k) for k, c in colors.items()]
    _figure_legend(fig, handles, seeds, loc="outside lower center", ncol=min(4, len(handles) + len(set(seeds))))
    fig.suptitle("ATKD's easy/hard token split over training (per logged batch window)", fontsize=10)
    return fig


def plot_atkd(logs: dict, out: Path, methods: Sequence[str] | None = None) -> bool:
    """ATKD's per-batch split: uncertainty threshold, hard-token share, loss on hard and on easy tokens
    over steps; one line per run labelled "source / method", one legend below the panels.

    Returns:
        False (and a PNG that says so) when no train log has the `atkd_*` columns.
    """
    fig = _atkd_figure(logs, methods)
    if fig is None:
        _placeholder(out, "no ATKD run in this study\n(no train log has the atkd_* columns)")
        return False
    _save(fig, out)
    return True


def write_plots(summary, train_logs: list[Path], plots_dir: Path) -> list[str]:
    """Every figure of the report into `plots_dir`: scores_<metric>.png (each metric of the summary,
    `judge` included when judged), train_loss.png, atkd.png; all with the same colour per method.

    Returns:
        Notes for the log (e.g. that the ATKD figure was skipped).
    """
    notes = []
    logs = _read_logs(train_logs)
    runs = summary[summary["kind"] == "run"] if "kind" in summary.columns else summary.iloc[:0]
    methods = [str(m) for m in runs.get("method", [])] + [r.method for r in map(RunId.search, logs) if r]
    for metric in dict.fromkeys([*SCORE_METRICS, *summary["metric"].unique()]):
        plot_scores(summary, metric, Path(plots_dir) / f"scores_{metric}.png", methods)
    plot_train_loss(logs, Path(plots_dir) / "train_loss.png", methods)
    if not plot_atkd(logs, Path(plots_dir) / "atkd.png", methods):
        notes.append("atkd.png: skipped, no train log has the atkd_* columns (no ATKD run)")
    return notes
