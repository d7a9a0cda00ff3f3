"""Teacher uncertainty files: 1 − p_teacher(target) at every counted response token of a training file.

The paper traces "a larger teacher is not always better" (its claim C2) to how easy or hard the
teacher finds the training tokens. `kdlm uncertainty` writes one parquet file per teacher and source
(:func:`write_uncertainty`); this module reads them back, compares two teachers' mean uncertainty with
a bootstrap over training examples, summarizes each file and plots their distributions. pyplot is
imported only when a plot is drawn, so reading the files stays light.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from kdlm.evaluation.seed_bootstrap import _CHUNK_ELEMENTS, Interval, _draw_counts
from kdlm.plots import _placeholder, _pyplot, _save
from kdlm.schemas import read_metadata, read_table, write_table

UNCERTAINTY = pa.schema([("row", pa.int64()), ("uncertainty", pa.float32())])
UNCERTAINTY_META = ("teacher", "source", "data")
EASY, HARD = 0.1, 0.9  # fixed uncertainty thresholds of the token shares: < 0.1 very easy, >= 0.9 very hard
_SOURCE_STYLES = ("-", "--", ":", "-.")


def write_uncertainty(
    row, uncertainty, path: str | Path, teacher: str, source: str, data: str | Path
) -> Path:
    """Write a teacher's uncertainty 1 − p_teacher(target) at every counted response token of a training
    file, with the training example index (`row`) of each token, atomically.

    Raises:
        ValueError: for arrays of different lengths, a negative row, or a value outside [0, 1].
    """
    rows = np.asarray(row, dtype=np.int64).reshape(-1)
    values = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    if rows.shape != values.shape:
        raise ValueError(f"{path}: {rows.size} rows but {values.size} uncertainty values")
    if rows.size and rows.min() < 0:
        raise ValueError(f"{path}: training example index (row) must be >= 0, got {int(rows.min())}")
    if not np.isfinite(values).all() or (values.size and (values.min() < -1e-3 or values.max() > 1 + 1e-3)):
        raise ValueError(f"{path}: uncertainty 1 - p_teacher(target) must be finite and in [0, 1]")
    df = pd.DataFrame({"row": rows, "uncertainty": np.clip(values, 0.0, 1.0).astype(np.float32)})
    write_table(df, path, UNCERTAINTY, metadata={"teacher": teacher, "source": source, "data": str(data)})
    return Path(path)


def read_uncertainty(path: str | Path) -> tuple[dict, pd.DataFrame]:
    """(metadata {teacher, source, data}, DataFrame[row, uncertainty]) of an uncertainty file.

    Raises:
        ValueError: naming the file when a column or a metadata field is missing.
    """
    meta = read_metadata(path)
    missing = [k for k in UNCERTAINTY_META if k not in meta]
    if missing:
        raise ValueError(
            f"{path}: uncertainty file lacks metadata field(s) {missing}; write it with "
            "kdlm.claims.write_uncertainty"
        )
    return {k: meta[k] for k in UNCERTAINTY_META}, read_table(path, UNCERTAINTY)


def uncertainty_difference(
    a: pd.DataFrame, b: pd.DataFrame, n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Mean token uncertainty of `a` − that of `b`, with a bootstrap over training examples.

    Tokens of one example are not independent, so examples (rows: the same training prompt for both
    teachers) are resampled, shared by `a` and `b`; each mean is a ratio Σ uncertainty / Σ tokens.
    """
    per_row = [df.groupby("row")["uncertainty"].agg(["sum", "count"]).astype(float) for df in (a, b)]
    rows = per_row[0].index.union(per_row[1].index)
    if not len(rows) or per_row[0]["count"].sum() == 0 or per_row[1]["count"].sum() == 0:
        raise ValueError("no uncertainty tokens to compare")
    (sa, na), (sb, nb) = [
        tuple(p.reindex(rows, fill_value=0.0)[c].to_numpy() for c in ("sum", "count")) for p in per_row
    ]
    estimate = sa.sum() / na.sum() - sb.sum() / nb.sum()
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, _CHUNK_ELEMENTS // len(rows)))
    stats = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        r = min(chunk, n_resamples - start)
        c = _draw_counts(rng, len(rows), r)  # (r, M)
        stats[start : start + r] = (c @ sa) / np.maximum(c @ na, 1) - (c @ sb) / np.maximum(c @ nb, 1)
    alpha = (1 - level) / 2
    return Interval(float(estimate), float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha)))


def uncertainty_stats(values) -> dict[str, float]:
    """Tokens, mean, median and the shares of very easy (< 0.1), easy (< 0.5) and very hard (>= 0.9)
    tokens."""
    u = np.asarray(values, dtype=np.float64)
    if not u.size:
        return {
            "tokens": 0,
            "mean": math.nan,
            "median": math.nan,
            "easy": math.nan,
            "half": math.nan,
            "hard": math.nan,
        }
    return {
        "tokens": int(u.size),
        "mean": float(u.mean()),
        "median": float(np.median(u)),
        "easy": float((u < EASY).mean()),
        "half": float((u < 0.5).mean()),
        "hard": float((u >= HARD).mean()),
    }


def _frac(x: float, signed: bool = False) -> str:
    """A fraction with 3 decimals (signed if asked), "–" for NaN; shared with the markdown report."""
    return "–" if x != x else format(round(x, 3) + 0.0, "+.3f" if signed else ".3f")


def plot_uncertainty(files: Sequence[str | Path], out_png: str | Path, teachers: Sequence[str] = ()) -> Path:
    """Distribution of each teacher's uncertainty on the training tokens, per source, with its median
    (where ATKD would split a batch) and the shares of very easy / very hard tokens.

    Args:
        teachers: the order (and so the colours) of the teachers, e.g. (small, large); others follow.
    """
    plt = _pyplot()
    loaded = [read_uncertainty(p) for p in files]
    if not loaded:
        _placeholder(Path(out_png), "no teacher uncertainty files given")
        return Path(out_png)
    names = list(dict.fromkeys([*teachers, *sorted(m["teacher"] for m, _ in loaded)]))
    names = [t for t in names if any(m["teacher"] == t for m, _ in loaded)]
    colour = {t: f"C{i % 10}" for i, t in enumerate(names)}
    sources = list(dict.fromkeys(m["source"] for m, _ in loaded))
    style = {s: _SOURCE_STYLES[i % len(_SOURCE_STYLES)] for i, s in enumerate(sources)}
    series = sorted(loaded, key=lambda x: (names.index(x[0]["teacher"]), sources.index(x[0]["source"])))

    fig = plt.figure(figsize=(12, 5.2 + 0.28 * len(series)))
    grid = fig.add_gridspec(2, 2, height_ratios=[3.2, 0.5 + 0.28 * len(series)], hspace=0.28, wspace=0.22)
    ax_h, ax_c, ax_t = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
    bins = np.linspace(0.0, 1.0, 41)
    xs = np.linspace(0.0, 1.0, 401)
    cells, row_colours = [], []
    for meta, df in series:
        u = np.clip(df["uncertainty"].to_numpy(np.float64), 0.0, 1.0)
        label = f"{meta['teacher']}, source {meta['source']}"
        c, ls = colour[meta["teacher"]], style[meta["source"]]
        st = uncertainty_stats(u)
        if u.size:
            ax_h.hist(
                u,
                bins=bins,
                weights=np.full(u.size, 1.0 / u.size),
                histtype="step",
                color=c,
                linestyle=ls,
                linewidth=1.8,
                label=label,
            )
            ax_c.plot(
                xs,
                np.searchsorted(np.sort(u), xs, side="right") / u.size,
                color=c,
                linestyle=ls,
                linewidth=1.8,
                label=label,
            )
            ax_c.plot(
                [st["median"]] * 2, [0.0, 0.5], color=c, linestyle=ls, linewidth=1.0
            )  # drop to the x axis
            ax_c.plot([st["median"]], [0.5], marker="o", markersize=7, color=c)
        cells.append(
            [
                meta["teacher"],
                meta["source"],
                f"{st['tokens']:,}",
                _frac(st["mean"]),
                _frac(st["median"]),
                f"{st['easy']:.1%}",
                f"{st['half']:.1%}",
                f"{st['hard']:.1%}",
            ]
        )
        row_colours.append(c)
    for ax in (ax_h, ax_c):
        ax.set_xlim(0, 1)
        ax.set_xlabel("teacher uncertainty 1 − p_teacher(target token)")
        ax.grid(alpha=0.3)
        for x in (EASY, HARD):
            ax.axvline(x, color="0.5", linestyle=":", linewidth=1)
    ax_h.set_yscale("log")  # most tokens are easy: a linear axis hides every bin but the first
    ax_h.set_ylabel("share of training tokens per bin (log scale)")
    ax_h.set_title("distribution over 40 bins of width 0.025", fontsize=9)
    ax_c.set_ylim(0, 1)
    ax_c.axhline(0.5, color="0.5", linewidth=0.8)
    ax_c.set_ylabel("share of tokens with uncertainty ≤ x")
    ax_c.set_title(
        "cumulative share; ● = median (ATKD splits each batch at its own median)\n"
        f"dotted: uncertainty {EASY:g} (below: very easy) and {HARD:g} (above: very hard)",
        fontsize=9,
    )
    ax_c.legend(
        fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="teacher, source", title_fontsize=8
    )
    ax_t.axis("off")
    table = ax_t.table(
        cellText=cells,
        colLabels=[
            *("teacher", "source", "tokens", "mean", "median"),
            *(f"< {EASY:g} (very easy)", "< 0.5", f"≥ {HARD:g} (very hard)"),
        ],
        loc="center",
        cellLoc="center",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    for i, c in enumerate(row_colours, start=1):
        table[i, 0].get_text().set_color(c)
        table[i, 0].get_text().set_fontweight("bold")
    fig.suptitle(
        "Teacher uncertainty on the training tokens (more mass near 0 = more easy tokens)", fontsize=11
    )
    _save(fig, Path(out_png))
    return Path(out_png)
