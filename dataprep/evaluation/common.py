"""Helpers the evaluation tasks share: the task error, item embeddings with the scorable mask,
the always-wrong prediction for an item without audio, labels, stable draws."""

from __future__ import annotations

from typing import Any

import numpy as np

from dataprep.core.hashing import stable_int
from dataprep.evaluation.data import EvalItem
from dataprep.evaluation.embed import Embedder


class TaskError(ValueError):
    """The task cannot run on this data (e.g. a classification set with one class)."""


def _h(*parts: Any) -> int:
    return stable_int(*parts)


def _audio(emb: Embedder, items: list[EvalItem]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of the scorable items (zero rows for the others) and the scorable mask."""
    ok = np.asarray([it.scorable for it in items], dtype=bool)
    if not ok.any():
        raise TaskError(f"none of the {len(items)} items could be decoded")
    good = emb.audio([it for it in items if it.scorable])
    x = np.zeros((len(items), good.shape[1]), dtype=good.dtype)
    x[ok] = good
    return x, ok


def _argmax_or_wrong(scores: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Predicted class per row; -1 (never a class: always wrong) where the item has no audio."""
    return np.where(ok, np.argmax(scores, axis=1), -1)


# ------------------------------------------------------------------------- classification ---
def _label(it: EvalItem) -> str:
    if not it.labels:
        raise TaskError(f"{it.source_id} has no label")
    return it.labels[0]
