"""Ranking metrics: the ONE owner, used by training validation (``model.training.validate``)
and by the evaluation harness (``dataprep.evaluation.metrics`` re-exports these).

Ties are broken pessimistically everywhere: a relevant item that ties with an irrelevant one is
ranked after it, so a constant model never gets credit for a lucky tie order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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


def paired_recall(sim: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Recall@k both ways on a square similarity matrix whose row i's positive is column i:
    ``a2t_r{k}`` over rows, ``t2a_r{k}`` over columns (training validation's metric)."""
    diag = [[i] for i in range(sim.shape[0])]
    out = {}
    for name, s in (("a2t", sim), ("t2a", sim.T)):
        ranks = ranks_of_relevant(s, diag)
        for k in ks:
            out[f"{name}_r{k}"] = float(recall_at_k(ranks, k).mean())
    return out
