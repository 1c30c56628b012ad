"""Task implementations, the result record and the Markdown table.

Every task returns ``{metric: Estimate}`` for one model ("column"); :func:`evaluate` runs all
tasks for every column (the checkpoint, a seeded random-init model of the same architecture,
and optionally a previous checkpoint) and :func:`markdown_table` renders the comparison.
Accuracy-type metrics carry a 95% bootstrap interval over test items (or queries).
Every item of the selected split is scored: one without features (undecodable audio, see
``EvalItem.error``) is a wrong prediction, a retrieval miss, and is listed in the table's notes.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dataprep.core.hashing import stable_int
from dataprep.core.lang import base_lang
from dataprep.evaluation import metrics as M
from dataprep.evaluation.data import EvalItem, load_eval_set, select
from dataprep.evaluation.embed import Embedder
from dataprep.evaluation.tasks import EMOTION_WORDS, Defaults, TaskConfig, TaskFile

log = logging.getLogger(__name__)

COLUMN_TITLES = {"checkpoint": "checkpoint", "random_init": "random-init", "previous": "previous"}


@dataclass
class Column:
    """One model to evaluate: name, model, its ExperimentConfig and tokenizer."""

    name: str
    model: Any
    cfg: Any
    tokenizer: Any
    source: str


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


def _display(task: TaskConfig, lang: str, label: str) -> str:
    names = task.class_names.get(lang, {})
    if label in names:
        return names[label]
    if task.type == "emotion":
        return EMOTION_WORDS.get(label.lower(), label)
    return label.replace("_", " ")


def _zero_shot_preds(
    task: TaskConfig,
    emb: Embedder,
    audio: np.ndarray,
    ok: np.ndarray,
    classes: list[str],
    langs: list[str],
    names: Callable[[str, str], str],
) -> dict[str, np.ndarray]:
    """Predicted class index per item for each language's templates and for all together."""
    temps = task.prompt_templates()
    per_lang = {}
    for lang in langs:
        if lang not in temps:
            continue
        prompts = [[t.format(names(lang, c)) for t in temps[lang]] for c in classes]
        per_lang[lang] = emb.class_embeddings(prompts)
    if not per_lang:
        raise TaskError(f"no templates for languages {langs}; have {sorted(temps)}")
    out = {lang: _argmax_or_wrong(audio @ ce.T, ok) for lang, ce in per_lang.items()}
    if len(per_lang) > 1:
        # ensemble over languages: mean of the per-language class embeddings
        ens = np.mean(np.stack(list(per_lang.values())), axis=0)
        ens /= np.maximum(np.linalg.norm(ens, axis=1, keepdims=True), 1e-12)
        out["all"] = _argmax_or_wrong(audio @ ens.T, ok)
    else:
        out["all"] = next(iter(out.values()))
    return out


def task_zero_shot(
    task: TaskConfig, items: list[EvalItem], emb: Embedder, d: Defaults
) -> dict[str, M.Estimate]:
    labels = [_label(it) for it in items]
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise TaskError(f"zero-shot needs >= 2 classes, found {classes}")
    y = np.asarray([classes.index(lab) for lab in labels])
    audio, ok = _audio(emb, items)
    langs = sorted(task.prompt_templates())
    preds = _zero_shot_preds(
        task, emb, audio, ok, classes, langs, lambda lang, c: _display(task, lang, c)
    )
    out = {"accuracy": M.bootstrap_mean(M.accuracy_per_item(y, preds["all"]), d.n_boot, d.seed)}
    if task.type == "emotion":
        out["uar"] = M.bootstrap_stat(y, preds["all"], "uar", d.n_boot, d.seed)
    if len(preds) > 2:
        for lang in langs:
            if lang in preds:
                out[f"accuracy_{lang}"] = M.bootstrap_mean(
                    M.accuracy_per_item(y, preds[lang]), d.n_boot, d.seed
                )
    return out


def task_keyword_spotting(
    task: TaskConfig, items: list[EvalItem], emb: Embedder, d: Defaults
) -> dict[str, M.Estimate]:
    """Per language: the keywords spoken in that language are the classes; the prompt uses the
    word as spoken (the transcript), templates in that language when the task has them."""
    by_lang: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        by_lang[base_lang(it.lang) or "und"].append(i)
    audio, ok = _audio(emb, items)
    temps = task.prompt_templates()
    correct = np.zeros(len(items))
    out: dict[str, M.Estimate] = {}
    for lang in sorted(by_lang):
        idx = by_lang[lang]
        labels = [_label(items[i]) for i in idx]
        classes = sorted(set(labels))
        if len(classes) < 2:
            log.warning(
                "%s: language %s has %d keyword class(es); skipped", task.name, lang, len(classes)
            )
            continue
        words: dict[str, Counter[str]] = defaultdict(Counter)
        for i, lab in zip(idx, labels):
            words[lab][(items[i].texts or [lab])[0]] += 1
        spoken = {c: words[c].most_common(1)[0][0] for c in classes}
        tl = lang if lang in temps else ("en" if "en" in temps else next(iter(temps)))
        prompts = [
            [t.format(task.class_names.get(lang, {}).get(c, spoken[c])) for t in temps[tl]]
            for c in classes
        ]
        ce = emb.class_embeddings(prompts)
        pred = _argmax_or_wrong(audio[idx] @ ce.T, ok[idx])
        y = np.asarray([classes.index(lab) for lab in labels])
        acc = M.accuracy_per_item(y, pred)
        correct[idx] = acc
        out[f"accuracy_{lang}"] = M.bootstrap_mean(acc, d.n_boot, d.seed)
    if not out:
        raise TaskError("no language has >= 2 keyword classes")
    used = [i for lang in by_lang if f"accuracy_{lang}" in out for i in by_lang[lang]]
    out = {"accuracy": M.bootstrap_mean(correct[sorted(used)], d.n_boot, d.seed), **out}
    return out


# ------------------------------------------------------------------------------ retrieval ---
def task_retrieval(
    task: TaskConfig, items: list[EvalItem], emb: Embedder, d: Defaults
) -> dict[str, M.Estimate]:
    """Every caption of a clip is a query for t2a (one relevant clip); every clip is a query
    for a2t with all its captions relevant (R@k: any of them in the top k) — AudioCaps/Clotho."""
    items = [it for it in items if it.texts]
    if len(items) < 2:
        raise TaskError("retrieval needs >= 2 clips with captions")
    captions, owner = [], []
    for i, it in enumerate(items):
        for c in it.texts:
            captions.append(c)
            owner.append(i)
    audio, ok = _audio(emb, items)
    text = emb.text(captions)
    out: dict[str, M.Estimate] = {}
    for direction in task.directions:
        if direction == "t2a":
            scores = M.cosine_scores(text, audio)
            scores[:, ~ok] = -np.inf  # a clip without audio is never retrieved
            relevant = [[o] for o in owner]
            hit_possible = ok[np.asarray(owner)]  # a caption of such a clip is a miss
        else:
            scores = M.cosine_scores(audio, text)
            relevant = [[j for j, o in enumerate(owner) if o == i] for i in range(len(items))]
            hit_possible = ok
        ranks = M.ranks_of_relevant(scores, relevant)
        for k in task.recall_ks:
            per_query = M.recall_at_k(ranks, k) * hit_possible
            out[f"{direction}_R@{k}"] = M.bootstrap_mean(per_query, d.n_boot, d.seed)
        per_query = M.average_precision_at_k(ranks, 10) * hit_possible
        out[f"{direction}_mAP@10"] = M.bootstrap_mean(per_query, d.n_boot, d.seed)
    return out


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


TASKS: dict[
    str, Callable[[TaskConfig, list[EvalItem], Embedder, Defaults], dict[str, M.Estimate]]
] = {
    "zero_shot": task_zero_shot,
    "emotion": task_zero_shot,
    "keyword_spotting": task_keyword_spotting,
    "retrieval": task_retrieval,
    "linear_probe": task_linear_probe,
    "few_shot": task_few_shot,
}


# --------------------------------------------------------------------------------- driver ---
def evaluate(
    task_file: TaskFile, columns: list[Column], cache_dir: str | None, device: str = "cpu"
) -> dict[str, Any]:
    """Run every task for every column. A task that cannot run records its error and the rest
    go on (one bad benchmark path must not hide the others)."""
    d = task_file.defaults
    result: dict[str, Any] = {
        "columns": [c.name for c in columns],
        "models": {c.name: c.source for c in columns},
        "defaults": d.model_dump(mode="json"),
        "tasks": {},
    }
    timings: dict[str, float] = {}
    embedders = {
        c.name: Embedder(c.model, c.cfg, c.tokenizer, d.batch_size, device) for c in columns
    }
    # A bar on a terminal, nothing in logs or tests (disable=None: off when not a TTY).
    for task in tqdm(task_file.tasks, desc="evaluate", unit="task", disable=None):
        rec: dict[str, Any] = {
            "type": task.type,
            "corpus": task.corpus.name,
            "reader": task.corpus.reader,
            "root": task.corpus.root,
            "split": task.split,
            "metrics": {},
            "errors": {},
        }
        t0 = time.perf_counter()
        for col in columns:
            try:
                es = load_eval_set(col.cfg, task.corpus, cache_dir)
                items = select(es, task.split, task.max_items)
                if not items:
                    raise TaskError(
                        f"no items in split {task.split!r} of {task.corpus.name} "
                        f"({len(es.items)} items, {len(es.rejects)} rejected)"
                    )
                rec.update(
                    n_items=len(items),
                    n_rejected=len(es.rejects),
                    feature_fingerprint=es.fingerprint,
                    undecodable=[
                        {"source_id": it.source_id, "error": it.error}
                        for it in items
                        if not it.scorable
                    ],
                    reader_rejects=[f"{r['source']} ({r['reason']})" for r in es.rejects],
                )
                for metric, est in TASKS[task.type](task, items, embedders[col.name], d).items():
                    rec["metrics"].setdefault(metric, {})[col.name] = est.as_dict()
            except (TaskError, FileNotFoundError, ValueError) as e:
                log.error("task %s (%s): %s", task.name, col.name, e)
                rec["errors"][col.name] = f"{type(e).__name__}: {e}"
        timings[task.name] = round(time.perf_counter() - t0, 2)
        result["tasks"][task.name] = rec
    result["timings_s"] = timings
    return result


def _fmt(est: dict[str, Any] | None) -> str:
    if est is None:
        return "–"
    v, lo, hi = est["value"], est["ci_low"], est["ci_high"]
    if lo is None or hi is None:  # a count, not an estimate
        return f"{v:g}"
    return f"{v:.3f} [{lo:.2f}, {hi:.2f}]"


def markdown_table(result: dict[str, Any]) -> str:
    cols = result["columns"]
    head = (
        "| task | type | metric | n | " + " | ".join(COLUMN_TITLES.get(c, c) for c in cols) + " |"
    )
    lines = [head, "|" + "---|" * (4 + len(cols))]
    for name, rec in result["tasks"].items():
        if not rec["metrics"]:
            err = "; ".join(f"{c}: {m}" for c, m in rec["errors"].items())
            lines.append(f"| {name} | {rec['type']} | error | – | {err} |" + " |" * (len(cols) - 1))
            continue
        for metric, per_col in rec["metrics"].items():
            n = next(iter(per_col.values()))["n"]
            cells = " | ".join(_fmt(per_col.get(c)) for c in cols)
            lines.append(f"| {name} | {rec['type']} | {metric} | {n} | {cells} |")
    lines.append("")
    lines.extend(_notes(result))
    lines.append(
        "Values: mean [95% bootstrap CI] over test items (retrieval: over queries); "
        "random-init is the same architecture with seeded random weights."
    )
    return "\n".join(lines) + "\n"


def _notes(result: dict[str, Any]) -> list[str]:
    """Every item that did not count as scored normally, named (the scores above include the
    undecodable ones as wrong; reader rejects carry no label and cannot be scored)."""
    out = []
    for name, rec in result["tasks"].items():
        bad = rec.get("undecodable") or []
        if bad:
            listed = "; ".join(f"{b['source_id']} ({b['error']})" for b in bad)
            out.append(
                f"{name}: {len(bad)} of {rec['n_items']} items could not be decoded and are "
                f"scored as wrong: {listed}."
            )
        if rec.get("n_rejected"):
            listed = "; ".join(rec.get("reader_rejects") or [])
            out.append(
                f"{name}: {rec['n_rejected']} rows of the corpus metadata were rejected by "
                f"the reader (no usable item to score): {listed}."
            )
    return out
