"""Fixed rules that turn a claim's intervals into a verdict and one plain sentence.

A reader should not have to judge overlapping error bars, so each of the paper's four claims has a rule
written down in advance: "supported" when the intervals lie on the side the claim expects,
"contradicted" when they lie on the other side, "inconclusive" otherwise. The rules see only intervals,
so they can be checked on made-up intervals without any study.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from kdlm.evaluation.seed_bootstrap import Interval

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"


class Judgement(NamedTuple):
    """A claim's verdict, the sentence that explains it, and the evidence row the summary table shows."""

    verdict: str
    sentence: str
    headline: str


def verdict(low: float, high: float, expect: str) -> str:
    """ "supported" when the interval lies on the side the claim expects, "contradicted" when it lies on
    the other side, "inconclusive" when it contains 0 (or is NaN)."""
    if expect not in ("positive", "negative"):
        raise ValueError(f"expect must be 'positive' or 'negative', got {expect!r}")
    if low > 0:
        return SUPPORTED if expect == "positive" else CONTRADICTED
    if high < 0:
        return SUPPORTED if expect == "negative" else CONTRADICTED
    return INCONCLUSIVE


def _pts(iv: Interval, level: float) -> str:
    return (
        f"{100 * iv.estimate:+.2f} points ({level:.0%} interval [{100 * iv.low:+.2f}, {100 * iv.high:+.2f}])"
    )


def _names(labels: Sequence[str]) -> str:
    return "; ".join(labels)


def c1_verdict(teacher_gap: Interval, students: Mapping[str, Interval], level: float = 0.95) -> Judgement:
    """C1: untested unless the larger teacher is better; then supported if some student of it is
    significantly worse, contradicted if every student of it is significantly better."""
    if not students:
        raise ValueError("C1 needs at least one student difference")
    if not teacher_gap.above():
        return Judgement(
            INCONCLUSIVE,
            f"The larger teacher did not score significantly above the smaller one "
            f"({_pts(teacher_gap, level)}), so this study cannot test whether a better teacher can give a "
            "worse student.",
            "teacher gap",
        )
    worse = [k for k, iv in students.items() if iv.below()]
    if worse:
        worst = min(worse, key=lambda k: students[k].estimate)
        return Judgement(
            SUPPORTED,
            f"The larger teacher scored {_pts(teacher_gap, level)} above the smaller one, yet its student was "
            f"significantly worse in {len(worse)} of {len(students)} comparisons ({_names(worse)}); "
            "a larger teacher did not always give a better student here, as the paper says.",
            worst,
        )
    if all(iv.above() for iv in students.values()):
        least = min(students, key=lambda k: students[k].low)
        return Judgement(
            CONTRADICTED,
            "The larger teacher scored higher and every student it taught was "
            "significantly better than the smaller teacher's student, against the paper's claim.",
            least,
        )
    open_ = [k for k, iv in students.items() if not iv.above()]
    return Judgement(
        INCONCLUSIVE,
        f"The larger teacher scored higher, but no student of it was significantly "
        f"worse, and these differences are not significant: {_names(open_)}; the study can neither "
        "confirm nor rule out the claim at this size.",
        min(open_, key=lambda k: students[k].estimate),
    )


def c2_verdict(uncertainty: Mapping[str, Interval], did: Interval, level: float = 0.95) -> Judgement:
    """C2: supported when the larger teacher is significantly more certain (uncertainty difference < 0
    for every source) and ATKD gains significantly more with it (diff-in-diff > 0); contradicted when
    ATKD gains significantly less with it; inconclusive otherwise."""
    if did.below():
        return Judgement(
            CONTRADICTED,
            f"ATKD's gain over forward KL was smaller with the larger teacher "
            f"({_pts(did, level)}), the opposite of what the easy/hard-token explanation predicts.",
            "did",
        )
    certain = bool(uncertainty) and all(iv.below() for iv in uncertainty.values())
    if certain and did.above():
        return Judgement(
            SUPPORTED,
            "The larger teacher was more certain on the training tokens (more easy tokens), "
            f"and ATKD's gain over forward KL was larger with it ({_pts(did, level)}), as the paper's "
            "explanation predicts.",
            "did",
        )
    reasons = []
    if not uncertainty:
        reasons.append("no teacher uncertainty files were given")
    elif not certain:
        open_ = [k for k, iv in uncertainty.items() if not iv.below()]
        reasons.append(f"the larger teacher was not significantly more certain ({_names(open_)})")
    if not did.above():
        reasons.append(f"ATKD's extra gain with the larger teacher is not significant ({_pts(did, level)})")
    return Judgement(INCONCLUSIVE, "The mechanism is not shown here: " + "; ".join(reasons) + ".", "did")


def c3_verdict(pooled: Interval, settings: Mapping[str, Interval], level: float = 0.95) -> Judgement:
    """C3: supported when ATKD beats forward KL pooled and is significantly worse in no setting;
    contradicted when it is significantly worse pooled."""
    worse = [k for k, iv in settings.items() if iv.below()]
    if pooled.below():
        return Judgement(
            CONTRADICTED,
            f"ATKD scored below forward KL over all teachers and sources ({_pts(pooled, level)}); "
            "the paper reports gains of up to +3.04 points on average.",
            "pooled",
        )
    if pooled.above() and not worse:
        return Judgement(
            SUPPORTED,
            f"ATKD beat forward KL over all teachers and sources by {_pts(pooled, level)} and was "
            "significantly worse in no setting (paper: up to +3.04 points on average).",
            "pooled",
        )
    if worse:
        return Judgement(
            INCONCLUSIVE,
            f"ATKD's pooled difference from forward KL is {_pts(pooled, level)}, but it was "
            f"significantly worse in: {_names(worse)}, so it does not help across sources here.",
            "pooled",
        )
    return Judgement(
        INCONCLUSIVE,
        f"ATKD and forward KL are not significantly different over all teachers and "
        f"sources ({_pts(pooled, level)}).",
        "pooled",
    )


def c4_verdict(diffs: Mapping[str, Interval], level: float = 0.95) -> Judgement:
    """C4: supported when the claimed λ beats every other λ significantly; contradicted when any other
    λ beats it significantly."""
    if not diffs:
        raise ValueError("C4 needs at least one other λ")
    better = [k for k, iv in diffs.items() if iv.below()]
    if better:
        best = min(better, key=lambda k: diffs[k].estimate)
        return Judgement(
            CONTRADICTED,
            f"Another weight scored significantly higher ({_names(better)}; largest "
            f"margin: {best}, {_pts(diffs[best], level)}), so the claimed λ is not the best here.",
            best,
        )
    closest = min(diffs, key=lambda k: diffs[k].low)
    if all(iv.above() for iv in diffs.values()):
        return Judgement(
            SUPPORTED,
            f"The claimed λ beat every other weight significantly (closest: {closest}, "
            f"{_pts(diffs[closest], level)}).",
            closest,
        )
    open_ = [k for k, iv in diffs.items() if not iv.above()]
    return Judgement(
        INCONCLUSIVE,
        f"No weight beat the claimed λ significantly, but it did not beat these "
        f"significantly either: {_names(open_)}.",
        closest,
    )
