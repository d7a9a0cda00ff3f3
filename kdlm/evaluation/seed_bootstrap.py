"""Percentile bootstrap intervals for seeds × examples grids of paired differences.

A model comparison has two sources of noise: which test examples were drawn and which training run
(seed) was drawn. These intervals resample both at once, sharing draws wherever grids share seeds or
test examples so that every pairing survives resampling, and so give intervals for single differences,
means pooled over settings and contrasts such as differences of differences. Pure numpy, so any report
that compares paired runs can use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from kdlm.sections import check_range

_CHUNK_ELEMENTS = 2_000_000  # resamples × examples drawn at once: bounds the bootstrap's memory


class Interval(NamedTuple):
    """An estimate and its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float

    def above(self) -> bool:
        return bool(self.low > 0)

    def below(self) -> bool:
        return bool(self.high < 0)

    @property
    def significant(self) -> bool:
        """True when the interval excludes 0."""
        return bool(self.low > 0 or self.high < 0)


@dataclass(frozen=True)
class Grid:
    """Paired per-example differences of one task: one row per seed, one column per test example.

    Grids with the same `seeds` share the seed draw of a resample and grids with the same `task` and
    `ids` share the example draw, which keeps every pairing when grids are combined.
    """

    values: np.ndarray  # (S, N)
    seeds: tuple[int, ...]
    ids: tuple[str, ...]
    task: str = "task"

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float64)
        if values.ndim != 2 or values.shape != (len(self.seeds), len(self.ids)) or not values.size:
            raise ValueError(
                f"task {self.task}: a grid needs shape (seeds, examples) = "
                f"({len(self.seeds)}, {len(self.ids)}) and at least one value, got {values.shape}"
            )
        if not np.isfinite(values).all():
            raise ValueError(f"task {self.task}: differences must be finite (a score is NaN)")
        object.__setattr__(self, "values", values)


def seed_example_bootstrap(diffs, n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Interval of the mean of a seeds × examples grid of paired differences.

    Each resample draws the seeds with replacement and the examples with replacement (one example draw
    for all seeds), so the interval covers both the test set and the training run; one seed reduces it
    to an example bootstrap.
    """
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.ndim != 2:
        raise ValueError(f"diffs must be a 2-D array (seeds × examples), got shape {diffs.shape}")
    grid = Grid(diffs, tuple(range(diffs.shape[0])), tuple(map(str, range(diffs.shape[1]))))
    return contrast_bootstrap([(1.0, [grid])], n_resamples, level, seed)


def pooled_bootstrap(
    settings: Sequence[Sequence[Grid]], n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Interval of the mean over settings (each the mean of its per-task grids, tasks stratified)."""
    if not settings:
        raise ValueError("no settings to pool")
    return contrast_bootstrap([(1.0 / len(settings), s) for s in settings], n_resamples, level, seed)


def contrast_bootstrap(
    terms: Sequence[tuple[float, Sequence[Grid]]], n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Interval of Σ weight × setting, a setting being the mean of its per-task grids' means.

    Pooling (weights 1/K) and differences of differences (weights ±1) are both such contrasts. Draws
    are shared where the data are shared: one seed draw per seed set, one example draw per test set
    (task and ids), so that resamples keep the pairing of seeds and examples across settings.
    """
    check_range("n_resamples", n_resamples, minimum=1)
    check_range("level", level, above=0.0, below=1.0)
    flat = [(w / len(grids), g) for w, grids in terms for g in grids if len(grids)]
    if not flat:
        raise ValueError("no differences to bootstrap")
    estimate = float(sum(w * g.values.mean() for w, g in flat))
    seed_keys = list(dict.fromkeys(g.seeds for _, g in flat))
    example_keys = list(dict.fromkeys((g.task, g.ids) for _, g in flat))
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, _CHUNK_ELEMENTS // max(len(k[1]) for k in example_keys)))
    stats = np.empty(n_resamples)  # (R,)
    for start in range(0, n_resamples, chunk):
        r = min(chunk, n_resamples - start)
        seed_counts = {k: _draw_counts(rng, len(k), r) for k in seed_keys}  # (r, S) times each seed is drawn
        example_counts = {k: _draw_counts(rng, len(k[1]), r) for k in example_keys}  # (r, N)
        part = np.zeros(r)
        for w, g in flat:
            s, n = g.values.shape
            # mean of the resampled grid = Σ_ij seed_count_i · example_count_j · value_ij / (S·N)
            part += (
                w
                * ((seed_counts[g.seeds] @ g.values) * example_counts[(g.task, g.ids)]).sum(axis=1)
                / (s * n)
            )
        stats[start : start + r] = part
    alpha = (1 - level) / 2
    return Interval(estimate, float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha)))


def _draw_counts(rng: np.random.Generator, n: int, r: int) -> np.ndarray:
    """(r, n): how often each of n items is drawn in r resamples of n draws with replacement."""
    idx = rng.integers(0, n, size=(r, n)) + (np.arange(r) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=r * n).reshape(r, n).astype(np.float64)
