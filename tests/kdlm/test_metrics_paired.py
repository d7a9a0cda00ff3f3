"""Paired bootstrap of the difference between two runs: hand-computed values and its basic properties."""

from __future__ import annotations

import numpy as np
import pytest

from kdlm.evaluation.metrics import bootstrap_ci, paired_bootstrap, paired_differences


def test_paired_differences_align_by_id_and_drop_unpaired():
    a = {"x": 1.0, "y": 0.0, "z": 1.0, "only_a": 5.0}
    b = {"z": 0.5, "y": 0.0, "x": 0.0, "only_b": 7.0}
    assert paired_differences(a, b).tolist() == [1.0, 0.0, 0.5]  # sorted ids x, y, z
    with pytest.raises(ValueError, match="no common example ids"):
        paired_differences({"a": 1.0}, {"b": 1.0})


def test_constant_difference_has_a_zero_width_interval():
    result = paired_bootstrap([0.25, 0.25, 0.25, 0.25])
    assert (result.delta, result.ci_low, result.ci_high, result.n) == (0.25, 0.25, 0.25, 4)
    assert result.significant


def test_hand_computed_delta_and_significance():
    # differences 1, 0, 0, -1: mean 0, the interval straddles 0
    result = paired_bootstrap([1.0, 0.0, 0.0, -1.0])
    assert result.delta == 0.0
    assert result.ci_low < 0 < result.ci_high
    assert not result.significant


def test_stratified_average_is_the_mean_of_task_means():
    # task 1: differences 1, 1 (mean 1); task 2: 0, 0, 0, 0, 0, 0 (mean 0) → average of task means 0.5,
    # not the pooled mean 2/8; both tasks are constant so every resample gives exactly 0.5
    result = paired_bootstrap([[1.0, 1.0], [0.0] * 6])
    assert (result.delta, result.ci_low, result.ci_high, result.n) == (0.5, 0.5, 0.5, 8)


def test_pairing_is_tighter_than_two_independent_intervals():
    rng = np.random.default_rng(0)
    difficulty = rng.random(200)
    a = difficulty + 0.05 + rng.normal(0, 0.02, 200)
    b = difficulty
    paired = paired_bootstrap(a - b)
    lo_a, hi_a = bootstrap_ci(a)
    lo_b, hi_b = bootstrap_ci(b)
    assert paired.significant and paired.ci_low <= 0.05 + 0.01
    assert paired.ci_high - paired.ci_low < (hi_a - lo_a) / 5
    assert lo_a < hi_b  # unpaired intervals overlap: the gain would look like noise


def test_empty_and_bad_level():
    assert np.isnan(paired_bootstrap([]).delta)
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap([1.0], level=1.5)
