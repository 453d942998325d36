from __future__ import annotations

import numpy as np
import pytest

from costfilter.decisions import holdout_split, quantile_threshold


@pytest.mark.parametrize("rate, expected", [(0.01, 99.0), (0.005, 100.0), (0.1, 90.0), (0.25, 75.0), (0.5, 50.0)])
def test_quantile_threshold_on_known_scores(rate, expected):
    scores = np.arange(1.0, 101.0)  # 1 … 100
    t = quantile_threshold(scores, rate)
    assert t == expected
    assert np.mean(scores > t) <= rate


def test_threshold_never_exceeds_target_rate_on_its_own_scores():
    rng = np.random.default_rng(0)
    for n in (3, 17, 200):
        s = rng.normal(size=n)
        for rate in (0.005, 0.05, 0.3):
            assert np.mean(s > quantile_threshold(s, rate)) <= rate


def test_holdout_split_is_seeded_disjoint_and_keeps_one_for_fitting():
    fit, cal = holdout_split(50, 0.1, seed=3)
    assert len(cal) == 5 and len(fit) == 45 and not set(fit) & set(cal)
    assert np.array_equal(cal, holdout_split(50, 0.1, seed=3)[1])
    assert len(holdout_split(2, 0.9, 0)[0]) == 1
    assert len(holdout_split(1, 0.5, 0)[1]) == 0
