"""Bootstrap intervals (scipy.stats.bootstrap) and UAR (sklearn) on the cases evaluation meets:
tiny imbalanced emotion sets whose resamples lose a class, constant scores, a seed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dataprep.evaluation import metrics as M


def test_uar_on_resamples_that_lose_a_class_is_quiet_and_bounded() -> None:
    labels = np.array([0, 0, 0, 0, 1, 2])  # classes 1 and 2 vanish from many resamples
    preds = np.array([0, 0, 1, 0, 1, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn's per-resample warnings must not leak
        est = M.bootstrap_stat(labels, preds, "uar", 300, seed=5)
    # recall per class: 3/4, 1/1, 0/1 -> (0.75 + 1 + 0) / 3
    assert est.value == pytest.approx((0.75 + 1.0 + 0.0) / 3)
    assert 0.0 <= est.ci_low <= est.value <= est.ci_high <= 1.0 and est.n == 6
    assert M.bootstrap_stat(labels, preds, "uar", 300, seed=5) == est
    assert M.bootstrap_stat(labels, preds, "uar", 300, seed=6) != est


def test_constant_scores_give_a_zero_width_interval() -> None:
    est = M.bootstrap_mean(np.ones(12), 500, seed=0)
    assert (est.value, est.ci_low, est.ci_high) == (1.0, 1.0, 1.0)
    # no resampling asked for, or a single unit: the value without an interval
    assert M.bootstrap_mean([0.25, 0.75], 0).as_dict() == {
        "value": 0.5, "ci_low": 0.5, "ci_high": 0.5, "n": 2,
    }  # fmt: skip
