"""Probe tasks on frozen audio embeddings: linear probe (k-fold logistic regression) and
few-shot prototypes (per language on request). Both score every item of the split."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from dataprep.core.lang import base_lang
from dataprep.evaluation import metrics as M
from dataprep.evaluation.common import TaskError, _argmax_or_wrong, _audio, _h, _label
from dataprep.evaluation.data import EvalItem
from dataprep.evaluation.embed import Embedder
from dataprep.evaluation.tasks import Defaults, TaskConfig

log = logging.getLogger("polyclap.eval")


# ------------------------------------------------------------------ probes on embeddings ---
def fold_ids(task: TaskConfig, items: list[EvalItem]) -> np.ndarray:
    """The corpus's own folds when every item has one (ESC-50, UrbanSound8K); otherwise a hash
    of the item's group (source recording / speaker) so related clips never straddle folds."""
    if all(task.fold_key in it.attributes for it in items):
        return np.asarray([int(it.attributes[task.fold_key]) for it in items])
    # groups in a seeded hash order, dealt round-robin: folds stay balanced even with few groups
    groups = sorted({it.group for it in items}, key=lambda g: (_h(task.name, g), g))
    fold_of = {g: i % task.folds for i, g in enumerate(groups)}
    return np.asarray([fold_of[it.group] for it in items])


def task_linear_probe(
    task: TaskConfig, items: list[EvalItem], emb: Embedder, d: Defaults
) -> dict[str, M.Estimate]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = [_label(it) for it in items]
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise TaskError(f"linear probe needs >= 2 classes, found {classes}")
    y = np.asarray([classes.index(lab) for lab in labels])
    x, ok = _audio(emb, items)
    x = x.astype(np.float64)
    folds = fold_ids(task, items)
    pred = np.full(len(items), -1)
    scored = np.zeros(len(items), dtype=bool)
    for f in sorted(set(folds.tolist())):
        test = folds == f
        train = ~test & ok  # an item without audio teaches nothing; as a test item it is wrong
        if len(set(y[train].tolist())) < 2:
            log.warning("%s: fold %s has < 2 training classes; skipped", task.name, f)
            continue
        clf = make_pipeline(
            StandardScaler(), LogisticRegression(C=task.probe_c, max_iter=2000, random_state=d.seed)
        )
        clf.fit(x[train], y[train])
        pred[test & ok] = clf.predict(x[test & ok])
        scored |= test
    if not scored.any():
        raise TaskError("no fold could be scored")
    return {
        "accuracy": M.bootstrap_mean(
            M.accuracy_per_item(y[scored], pred[scored]), d.n_boot, d.seed
        ),
        "folds": M.Estimate(
            float(len(set(folds[scored].tolist()))), float("nan"), float("nan"), int(scored.sum())
        ),
    }


def _episodes(
    task: TaskConfig, x: np.ndarray, ok: np.ndarray, y: np.ndarray, usable: list[int], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hits and query counts per item over ``episodes`` seeded support draws among ``usable``."""
    hits, seen = np.zeros(len(y)), np.zeros(len(y))
    for e in range(task.episodes):
        rng = np.random.default_rng([seed, e])
        support, protos = np.zeros(len(y), dtype=bool), []
        for c in usable:
            members = np.flatnonzero((y == c) & ok)
            if members.size < task.k:
                raise TaskError(
                    f"few-shot k={task.k}: class {c} has {members.size} decodable items"
                )
            support[rng.choice(members, size=task.k, replace=False)] = True
            p = x[support & (y == c)].mean(axis=0)
            protos.append(p / max(float(np.linalg.norm(p)), 1e-12))
        query = np.isin(y, usable) & ~support
        idx = _argmax_or_wrong(x[query] @ np.stack(protos).T, ok[query])
        hits[query] += np.where(idx >= 0, np.asarray(usable)[idx], -1) == y[query]
        seen[query] += 1
    return hits, seen


def task_few_shot(
    task: TaskConfig, items: list[EvalItem], emb: Embedder, d: Defaults
) -> dict[str, M.Estimate]:
    """Nearest class prototype (mean of k support embeddings); ``episodes`` seeded support
    draws; an item's score is its accuracy over the episodes where it was a query. With
    ``per_lang`` the classes are those of each language (few-shot keyword spotting), scored per
    language (``accuracy_<lang>``) and overall; a language with < 2 usable classes is skipped."""
    labels = [_label(it) for it in items]
    classes = sorted(set(labels))
    y = np.asarray([classes.index(lab) for lab in labels])
    x, ok = _audio(emb, items)
    langs = [(base_lang(it.lang) or "und") if task.per_lang else "" for it in items]
    hits, seen = np.zeros(len(items)), np.zeros(len(items))
    out: dict[str, M.Estimate] = {}
    for lang in sorted(set(langs)):
        mine = np.asarray([g == lang for g in langs])
        counts = Counter(y[mine].tolist())
        usable = [c for c in sorted(counts) if counts[c] > task.k]
        if len(usable) < 2 and not task.per_lang:
            raise TaskError(
                f"few-shot k={task.k} needs >= 2 classes with > k items; counts {dict(counts)}"
            )
        if len(usable) < 2:  # per language: that language cannot be scored, the others can
            log.warning(
                "%s: language %s has < 2 classes with > k=%d items; skipped",
                task.name,
                lang,
                task.k,
            )
            continue
        h, n = _episodes(task, x, ok & mine, np.where(mine, y, -1), usable, d.seed)
        hits, seen = hits + h, seen + n
        out[f"accuracy_{lang}"] = M.bootstrap_mean(h[n > 0] / n[n > 0], d.n_boot, d.seed)
    if not (scored := seen > 0).any():
        raise TaskError("no language has >= 2 classes with > k items")
    return {
        "accuracy": M.bootstrap_mean(hits[scored] / seen[scored], d.n_boot, d.seed),
        **(out if task.per_lang else {}),
    }
