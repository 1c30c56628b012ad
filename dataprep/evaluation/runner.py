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

from dataprep.core.lang import base_lang
from dataprep.evaluation import metrics as M
from dataprep.evaluation.common import TaskError, _argmax_or_wrong, _audio, _label
from dataprep.evaluation.data import EvalItem, load_eval_set, select
from dataprep.evaluation.embed import Embedder
from dataprep.evaluation.probes import task_few_shot, task_linear_probe
from dataprep.evaluation.sed import task_sound_event_detection
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
        per_lang[lang] = emb.class_embeddings(prompts, lang)
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
        ce = emb.class_embeddings(prompts, tl)
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
    text = emb.text(captions, [items[o].lang for o in owner])  # a caption's language: its clip's
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
                if task.type == "sound_event_detection":  # files as they are: no trim, no cache
                    sed_metrics, info = task_sound_event_detection(task, col, d, device)
                    rec.update(info)
                    for metric, est in sed_metrics.items():
                        rec["metrics"].setdefault(metric, {})[col.name] = est.as_dict()
                    continue
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
