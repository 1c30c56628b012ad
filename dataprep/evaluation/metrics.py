"""Metrics on embeddings and predictions, with percentile-bootstrap confidence intervals.

Intervals come from ``scipy.stats.bootstrap`` (percentile method), UAR from
``sklearn.metrics.balanced_accuracy_score``; both are deterministic given ``seed``. A metric
that is a mean over independent units (queries, test clips) is bootstrapped by resampling those
units with replacement, which is how small evaluation sets should be read: 40 clips give a wide
interval, and the table shows it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import balanced_accuracy_score

# Ranking metrics have one owner below this layer, shared with training validation.
from model.metrics import (  # noqa: F401  (re-exported for the runner: M.recall_at_k, ...)
    average_precision_at_k,
    cosine_scores,
    ranks_of_relevant,
    recall_at_k,
)


@dataclass(frozen=True)
class Estimate:
    """A mean over units with its 95% percentile-bootstrap interval."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        def num(x: float) -> float | None:
            return None if math.isnan(x) else x  # NaN (no interval, e.g. a count) -> JSON null

        return {
            "value": num(self.value),
            "ci_low": num(self.ci_low),
            "ci_high": num(self.ci_high),
            "n": self.n,
        }


def _percentile_interval(
    data: tuple[np.ndarray, ...],
    statistic: Callable[..., Any],
    n_boot: int,
    seed: int,
    level: float,
    paired: bool,
    vectorized: bool,
) -> tuple[float, float]:
    """``scipy.stats.bootstrap``'s percentile interval (resampling units with replacement)."""
    res = stats.bootstrap(
        data,
        statistic,
        n_resamples=n_boot,
        confidence_level=level,
        method="percentile",  # BCa needs jackknife passes and is undefined for constant data
        paired=paired,
        vectorized=vectorized,
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def bootstrap_mean(
    per_unit: Sequence[float] | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """Mean of ``per_unit`` scores and its percentile-bootstrap interval."""
    x = np.asarray(per_unit, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap needs a non-empty 1-D array, got shape {x.shape}")
    value = float(x.mean())
    if n_boot <= 0 or x.size == 1:
        return Estimate(value, value, value, int(x.size))
    lo, hi = _percentile_interval((x,), np.mean, n_boot, seed, level, paired=False, vectorized=True)
    return Estimate(value, lo, hi, int(x.size))


def bootstrap_stat(
    labels: np.ndarray,
    preds: np.ndarray,
    stat: str,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """Bootstrap a non-additive statistic of (labels, preds) pairs; ``stat``: ``uar``."""
    labels = np.asarray(labels)
    preds = np.asarray(preds)
    fn = {"uar": unweighted_average_recall}[stat]
    value = fn(labels, preds)
    if n_boot <= 0 or labels.size <= 1:
        return Estimate(value, value, value, int(labels.size))
    # Pairs are resampled together (paired=True): a clip keeps its own prediction.
    lo, hi = _percentile_interval(
        (labels, preds), fn, n_boot, seed, level, paired=True, vectorized=False
    )
    return Estimate(value, lo, hi, int(labels.size))


def unweighted_average_recall(labels: np.ndarray, preds: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``labels`` (emotion's usual UAR)."""
    with warnings.catch_warnings():
        # A bootstrap resample may lack a class that the predictions still name, or hold one
        # class only; sklearn then warns and averages over the classes present in ``labels``,
        # which is the definition used here.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found")
        return float(balanced_accuracy_score(labels, preds))


def accuracy_per_item(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    return (np.asarray(labels) == np.asarray(preds)).astype(np.float64)
