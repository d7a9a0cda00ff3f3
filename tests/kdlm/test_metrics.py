"""Metrics against hand-computed values; the bootstrap interval's basic properties."""

from __future__ import annotations

import numpy as np
import pytest

from kdlm.evaluation.metrics import bootstrap_ci, exact_match, normalize_answer, rouge_l


def test_exact_match_normalizes_case_punctuation_articles_and_spaces():
    assert normalize_answer("  The  Cat, sat. ") == "cat sat"
    assert exact_match("BLUE FISH.", "blue fish") == 1.0
    assert exact_match("blue fish", "blue fishes") == 0.0


def test_rouge_l_by_hand():
    # LCS("the cat sat", "the cat ate") = 2 tokens: P = R = 2/3, F = 2/3
    assert rouge_l(["the cat sat"], ["the cat ate"]) == [pytest.approx(2 / 3)]
    assert rouge_l(["a b c d"], ["a b c d"]) == [pytest.approx(1.0)]
    assert rouge_l(["x"], ["y z"]) == [0.0]
    # P = 1/1, R = 1/4 → F = 2·1·0.25/1.25 = 0.4
    assert rouge_l(["w"], ["w x y z"]) == [pytest.approx(0.4)]


def test_bootstrap_contains_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = rng.random(20)
    large = rng.random(2000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= small.mean() <= hi_s
    assert lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3
    assert bootstrap_ci([0.5]) == (0.5, 0.5)
