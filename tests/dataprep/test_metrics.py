"""Evaluation metrics: retrieval ranks/R@k/mAP@10 against hand-computed cases, bootstrap CIs."""

from __future__ import annotations

import numpy as np
import pytest

from dataprep.evaluation import metrics as M


def test_ranks_recall_and_map_on_a_hand_built_score_matrix() -> None:
    # 3 queries over 5 items; relevant items chosen so ranks are 1, 3 and (2, 4)
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.3, 0.4],  # relevant 0 -> rank 1
            [0.5, 0.9, 0.6, 0.1, 0.0],  # relevant 0 -> rank 3
            [0.1, 0.8, 0.9, 0.7, 0.2],  # relevant 1 and 3 -> ranks 2 and 3
        ]
    )
    ranks = M.ranks_of_relevant(scores, [[0], [0], [1, 3]])
    assert [r.tolist() for r in ranks] == [[1], [3], [2, 3]]
    np.testing.assert_array_equal(M.recall_at_k(ranks, 1), [1, 0, 0])
    np.testing.assert_array_equal(M.recall_at_k(ranks, 2), [1, 0, 1])
    ap = M.average_precision_at_k(ranks, 10)
    # q0: 1/1; q1: 1/3; q2: (1/2 + 2/3) / 2
    np.testing.assert_allclose(ap, [1.0, 1 / 3, (0.5 + 2 / 3) / 2])
    # a relevant item ranked beyond k contributes nothing, but still counts in the denominator
    np.testing.assert_allclose(M.average_precision_at_k(ranks, 2), [1.0, 0.0, 0.5 / 2])


def test_ties_rank_the_relevant_item_last() -> None:
    scores = np.zeros((1, 4))  # a constant model: every item ties
    ranks = M.ranks_of_relevant(scores, [[2]])
    assert ranks[0].tolist() == [4]
    assert M.recall_at_k(ranks, 1).tolist() == [0.0]


def test_bootstrap_interval_contains_mean_narrows_with_n_and_is_deterministic() -> None:
    rng = np.random.default_rng(3)
    small = (rng.random(20) < 0.6).astype(float)
    large = (rng.random(2000) < 0.6).astype(float)
    a = M.bootstrap_mean(small, 1000, seed=0)
    b = M.bootstrap_mean(small, 1000, seed=0)
    assert a == b
    assert a.ci_low <= a.value <= a.ci_high
    big = M.bootstrap_mean(large, 1000, seed=0)
    assert (big.ci_high - big.ci_low) < (a.ci_high - a.ci_low) / 4
    # the interval of a binomial mean is close to the normal approximation
    se = np.sqrt(big.value * (1 - big.value) / large.size)
    assert big.ci_high - big.ci_low == pytest.approx(2 * 1.96 * se, rel=0.2)
    with pytest.raises(ValueError):
        M.bootstrap_mean([], 10)


def test_uar_weights_classes_equally() -> None:
    labels = np.array([0] * 8 + [1] * 2)
    preds = np.array([0] * 8 + [0] * 2)  # majority class only
    assert M.accuracy_per_item(labels, preds).mean() == pytest.approx(0.8)
    assert M.unweighted_average_recall(labels, preds) == pytest.approx(0.5)
    est = M.bootstrap_stat(labels, preds, "uar", 200, seed=1)
    assert est.value == pytest.approx(0.5) and est.ci_low <= 0.5 <= est.ci_high


def test_cosine_scores_renormalize() -> None:
    q = np.array([[3.0, 0.0]])
    it = np.array([[0.0, 2.0], [5.0, 0.0]])
    np.testing.assert_allclose(M.cosine_scores(q, it), [[0.0, 1.0]])


def test_ties_among_relevant_items_cost_nothing() -> None:
    # one clip with 3 equally scored captions (all relevant) above 2 irrelevant ones
    scores = np.array([[0.9, 0.9, 0.9, 0.1, 0.9]])
    ranks = M.ranks_of_relevant(scores, [[0, 1, 2]])
    assert ranks[0].tolist() == [2, 3, 4]  # the tied irrelevant item 4 goes first
    assert M.recall_at_k(ranks, 1).tolist() == [0.0]
    assert M.recall_at_k(ranks, 2).tolist() == [1.0]
