"""One owner of ranking metrics (model/metrics.py): training validation and the evaluation
harness compute the same recall, with the same pessimistic tie-breaking."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dataprep.evaluation import metrics as eval_metrics
from model import metrics
from model.training import validate


def test_the_harness_uses_the_model_layer_functions() -> None:
    for name in ("cosine_scores", "ranks_of_relevant", "recall_at_k", "average_precision_at_k"):
        assert getattr(eval_metrics, name) is getattr(metrics, name)


def test_paired_recall_breaks_ties_pessimistically() -> None:
    sim = np.zeros((4, 4))  # a constant model: every candidate ties with the positive
    r = metrics.paired_recall(sim, ks=(1, 4))
    assert r == {"a2t_r1": 0.0, "a2t_r4": 1.0, "t2a_r1": 0.0, "t2a_r4": 1.0}
    sim = np.eye(3) + 0.1
    sim[0, 1] = 1.5  # row 0's positive is beaten once; column 1's positive too
    r = metrics.paired_recall(sim, ks=(1, 2))
    assert r["a2t_r1"] == 2 / 3 and r["a2t_r2"] == 1.0 and r["t2a_r1"] == 2 / 3


class _ConstantEngine:
    """A bare stand-in for the DeepSpeed engine: ``engine(**batch)`` and ``engine.module``."""

    def __init__(self) -> None:
        self.module = nn.Linear(1, 1)

    def __call__(self, mel: torch.Tensor, **_: torch.Tensor) -> dict[str, torch.Tensor]:
        e = torch.ones(mel.shape[0], 4) / 2.0
        return {"audio_emb": e, "text_emb": e}


def test_training_validation_counts_a_tie_as_a_miss() -> None:
    """The old validation counted only strictly better candidates, so a collapsed model scored
    R@1 = 1.0; the shared metric scores it 0."""
    batch = {
        "mel": torch.zeros(5, 2, 3),
        "mel_lengths": torch.full((5,), 3),
        "ids": torch.zeros(5, 2, dtype=torch.long),
        "mask": torch.ones(5, 2, dtype=torch.bool),
    }
    out = validate(_ConstantEngine(), [batch], "cpu", torch.float32)
    assert out["val_a2t_r1"] == 0.0 and out["val_t2a_r1"] == 0.0 and out["val_a2t_r5"] == 1.0
    assert out["val_samples"] == 5.0
