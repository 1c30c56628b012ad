"""Metrics on embeddings and predictions, with percentile-bootstrap confidence intervals.

Everything is numpy and deterministic given ``seed``. A metric that is a mean over independent
units (queries, test clips) is bootstrapped by resampling those units with replacement, which
is how small evaluation sets should be read: 40 clips give a wide interval, and the table
shows it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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

        return {"value": num(self.value), "ci_low": num(self.ci_low), "ci_high": num(self.ci_high), "n": self.n}


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
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return Estimate(value, float(lo), float(hi), int(x.size))


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
    rng = np.random.default_rng(seed)
    vals = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, labels.size, size=labels.size)
        vals[b] = fn(labels[idx], preds[idx])
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(vals, [alpha, 1.0 - alpha])
    return Estimate(value, float(lo), float(hi), int(labels.size))


def unweighted_average_recall(labels: np.ndarray, preds: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``labels`` (emotion's usual UAR)."""
    classes = np.unique(labels)
    return float(np.mean([np.mean(preds[labels == c] == c) for c in classes]))


def cosine_scores(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """``[Q, N]`` similarities of L2-normalized rows (renormalized here, so any input works)."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    it = items / np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-12)
    return q @ it.T


def ranks_of_relevant(scores: np.ndarray, relevant: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Per query, the sorted 1-based ranks of its relevant items. A tie with an irrelevant item
    ranks the relevant one last (pessimistic), so a constant model never gets credit for a
    lucky tie order; ties among relevant items cost nothing (they are interchangeable)."""
    out = []
    for qi, rel in enumerate(relevant):
        s = scores[qi]
        is_rel = np.zeros(s.shape[0], dtype=bool)
        is_rel[list(rel)] = True
        other = np.sort(s[~is_rel])
        rel_scores = np.sort(s[is_rel])[::-1]
        # irrelevant items scoring >= the i-th best relevant item, plus the i better relevant ones
        above = other.size - np.searchsorted(other, rel_scores, side="left")
        out.append((np.arange(rel_scores.size) + 1 + above).astype(np.int64))
    return out


def recall_at_k(ranks: list[np.ndarray], k: int) -> np.ndarray:
    """Per query 1.0 when any relevant item is within the top ``k`` (AudioCaps/Clotho R@k)."""
    return np.asarray([1.0 if r.size and r[0] <= k else 0.0 for r in ranks])


def average_precision_at_k(ranks: list[np.ndarray], k: int = 10) -> np.ndarray:
    """Per query AP@k: mean of precision@rank over relevant items ranked within ``k``, divided
    by ``min(#relevant, k)`` (with one relevant item this is 1/rank, DCASE's mAP@10)."""
    out = []
    for r in ranks:
        hits = r[r <= k]
        if r.size == 0:
            out.append(0.0)
            continue
        # the i-th relevant hit (1-based) at rank r_i has precision i / r_i
        prec = np.arange(1, hits.size + 1) / hits
        out.append(float(prec.sum() / min(r.size, k)))
    return np.asarray(out)


def accuracy_per_item(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    return (np.asarray(labels) == np.asarray(preds)).astype(np.float64)
