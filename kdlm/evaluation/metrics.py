"""Per-example metrics and their uncertainty: ROUGE-L, normalized exact match, bootstrap intervals.

With 80 Vicuna prompts a one-point difference is noise, so every task mean comes with a bootstrap
interval, and the difference between two runs on the same task with a *paired* bootstrap over the
examples both answered: per-example difficulty cancels, which makes the interval much tighter than
comparing two independent intervals.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from rouge_score import rouge_scorer

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (SQuAD-style normalization)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure per example, with `rouge-score`'s tokenizer and stemming."""

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)]


# per-example scorers of the scored metrics of kdlm.study.EVAL_METRICS: (predictions, references) -> scores
SCORERS: dict[str, Callable[[Sequence[str], Sequence[str]], list[float]]] = {
    "rouge_l": rouge_l,
    "exact_match": lambda predictions, references: [
        exact_match(p, r) for p, r in zip(predictions, references, strict=True)
    ],
}


def bootstrap_ci(values: Sequence[float], n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean; a single value gives a zero-width interval."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_resamples, data.size))].mean(axis=1)  # (R,)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


@dataclass(frozen=True)
class PairedDiff:
    """Mean difference a − b over paired examples, with its percentile bootstrap interval."""

    delta: float
    ci_low: float
    ci_high: float
    n: int  # paired examples (summed over tasks for a stratified difference)

    @property
    def significant(self) -> bool:
        """True when the interval excludes 0."""
        return bool(self.ci_low > 0 or self.ci_high < 0)


def paired_differences(a: Mapping[str, float], b: Mapping[str, float]) -> np.ndarray:
    """Per-example differences a[id] − b[id] over the ids both runs answered, in sorted id order.

    Raises:
        ValueError: if the two runs share no example id.
    """
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError(f"no common example ids to pair ({len(a)} vs {len(b)} examples)")
    return np.array([float(a[i]) - float(b[i]) for i in common], dtype=np.float64)


def paired_bootstrap(
    diffs: Sequence[Sequence[float]] | Sequence[float], n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> PairedDiff:
    """Paired bootstrap of a mean difference, resampling examples (not runs) so shared difficulty cancels.

    Args:
        diffs: per-example differences of one task, or a list of such arrays, one per task: then the
            statistic is the average of the task means (as the report's "average" column) and each
            resample draws within each task (stratified).

    Returns:
        The observed mean difference and its `level` percentile interval.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    groups = [np.asarray(d, dtype=np.float64) for d in diffs] if _is_nested(diffs) else [np.asarray(diffs, dtype=float)]
    groups = [g for g in groups if g.size]
    if not groups:
        return PairedDiff(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    delta = float(np.mean([g.mean() for g in groups]))
    stats = np.zeros(n_resamples)  # (R,)
    for g in groups:
        stats += g[rng.integers(0, g.size, size=(n_resamples, g.size))].mean(axis=1)
    stats /= len(groups)
    alpha = (1 - level) / 2
    return PairedDiff(delta, float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha)),
                      sum(g.size for g in groups))  # fmt: skip


def _is_nested(values) -> bool:
    return len(values) > 0 and isinstance(values[0], Sequence | np.ndarray) and not isinstance(values[0], str)

