"""Zero-shot sound-event detection / text-to-audio grounding (task type
``sound_event_detection``).

Each file of the corpus (any reader; ``folder`` for a directory of mixtures) goes through
``model.CLAP.frame_embeddings`` — the inference path: decode, normalize, windows, no trim, so
frame times are seconds from the start of the file, as the ground truth's are. Each class is a
prompt ensemble (the task's templates, mean over languages) embedded by
``frame_text_embeddings``; a frame's score for a class is their cosine (MGA-CLAP's zero-shot
SED). Scores are median-filtered over time (``sed.median_filter`` frames), thresholded at
``sed.thresholds`` quantiles of all scores, and each threshold's runs of active frames are the
detections of one operating point. ``psds_eval`` (DCASE's reference PSDS implementation) scores
them against the DCASE-format ground truth:

- ``psds``: the polyphonic sound detection score over all operating points (DTC / GTC / CTTC and
  alphas from ``sed``; defaults: the PSDS1 scenario; see :func:`psds_value` for what of
  psds_eval 0.5.3 runs under pandas 3 / NumPy 2);
- ``f1_best``: the best intersection-based macro F1 over the operating points (threshold chosen on
  the test set: an upper bound, as ``sed_scores_eval``'s ``best_fscore``).

Both are one number for the whole set (no bootstrap interval). A file that cannot be decoded has
no detections (its events are missed) and is listed in the table's notes; a ground-truth row
naming a file the corpus does not list is an error, not a silent drop.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import median_filter

from dataprep.core.features import feature_fingerprint
from dataprep.core.sample import Reject
from dataprep.corpora import read_corpus
from dataprep.evaluation import metrics as M
from dataprep.evaluation.common import TaskError
from dataprep.evaluation.tasks import Defaults, TaskConfig
from model.api import CLAP
from model.inference import Preprocessing
from model.prompts import ensemble, normalize
from model.tokenizer import make_tokenize

log = logging.getLogger(__name__)

GT_COLUMNS = ("filename", "onset", "offset", "event_label")


def read_ground_truth(path: Path) -> list[tuple[str, float, float, str]]:
    """Rows of a DCASE ground-truth tsv (header ``filename onset offset event_label``)."""
    if not path.is_file():
        raise TaskError(f"ground truth not found: {path}")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or any(c not in rows[0] for c in GT_COLUMNS):
        raise TaskError(f"{path}: needs tab-separated columns {list(GT_COLUMNS)}")
    out = []
    for i, r in enumerate(rows, start=2):
        try:
            on, off = float(r["onset"]), float(r["offset"])
        except (TypeError, ValueError):
            raise TaskError(f"{path}:{i}: onset/offset are not numbers: {r}") from None
        if not (math.isfinite(on) and math.isfinite(off) and 0 <= on < off) or not r["event_label"]:
            raise TaskError(f"{path}:{i}: needs 0 <= onset < offset and a label: {r}")
        out.append((r["filename"], on, off, r["event_label"]))
    return out


def class_prompts(task: TaskConfig, classes: Sequence[str]) -> dict[str, list[list[str]]]:
    """Per language, per class, its prompts (display names as the zero-shot task shows them)."""
    out = {}
    for lang, temps in task.prompt_templates().items():
        names = task.class_names.get(lang, {})
        out[lang] = [[t.format(names.get(c, c.replace("_", " "))) for t in temps] for c in classes]
    return out


def api_of(column: Any, batch_size: int, device: str) -> CLAP:
    """The column's model behind the public API (the same frame path a user calls)."""
    cfg = column.cfg
    tokenize = make_tokenize(column.tokenizer, cfg.model.text)
    return CLAP(
        column.model,
        Preprocessing.of(cfg),
        tokenize,
        cfg=cfg,
        tokenizer=column.tokenizer,
        device=device,
        batch_size=batch_size,
        progress=False,
    )


def events_of(
    scores: np.ndarray, starts: np.ndarray, ends: np.ndarray, threshold: float
) -> list[tuple[float, float, int]]:
    """``(onset, offset, class)`` for each run of frames scoring above ``threshold``."""
    out = []
    active = scores > threshold  # [T, C]
    for c in range(active.shape[1]):
        edges = np.diff(np.concatenate([[0], active[:, c].astype(np.int8), [0]]))
        for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            out.append((float(starts[a]), float(ends[b - 1]), c))
    return out


def psds_value(ev: Any, opts: Any) -> float:
    """PSDS from ``psds_eval``'s PSD-ROC (its DTC/GTC/CTTC matching of every operating point).

    The ROC is ``psd_roc_curves(linear_interp=True)``: psds_eval 0.5.3's staircase calls
    pandas' ``fillna(method=)`` (gone in pandas 3), and its final ``PSDSEval.psds`` area step
    calls ``int()`` on a 2-D array (an error in NumPy 2). The area below is that step's own
    rule: eTPR = mean - alpha_st * std over classes (>= 0), rectangles up to ``max_efpr``,
    divided by ``max_efpr``.
    """
    roc = ev.psd_roc_curves(opts.alpha_ct, linear_interp=True)[2]
    etpr = np.clip(np.nan_to_num(roc.mean - opts.alpha_st * roc.std, nan=0.0), 0.0, None)
    keep = roc.xp <= opts.max_efpr
    x, y = roc.xp[keep], etpr[keep]
    if x.size == 0:
        return 0.0
    x, y = np.append(x, opts.max_efpr), np.append(y, y[-1])
    return float(np.sum(np.diff(x) * y[:-1]) / opts.max_efpr)


def macro_f1(ev: Any, det: Any, n_classes: int) -> float:
    """Intersection-based macro F1 of one operating point (psds_eval's DTC/GTC matching). A
    class with no true positive is F1 0: psds_eval leaves it NaN (it divides by its TP ratio)
    and its nanmean would drop that class from the average."""
    per_class = ev.compute_macro_f_score(det)[1]
    return float(np.sum(np.nan_to_num(list(per_class.values()), nan=0.0)) / n_classes)


def _frame_scores(
    task: TaskConfig, api: CLAP, paths: list[str], classes: list[str]
) -> tuple[list[Any], list[Any]]:
    prompts = class_prompts(task, classes)
    per_lang = []
    for lang in sorted(prompts):  # each language's class ensemble, then their mean
        flat = [p for ps in prompts[lang] for p in ps]
        sizes = [len(ps) for ps in prompts[lang]]
        per_lang.append(ensemble(api.frame_text_embeddings(flat), sizes))
    text = normalize(np.mean(np.stack(per_lang), axis=0)).astype(np.float32)  # [C, E]
    series, errors = api.frame_embeddings(paths, return_errors=True)
    k = task.sed.median_filter
    scored = [
        None
        if s is None
        else (median_filter(s.embeddings @ text.T, size=(k, 1), mode="nearest"), s)
        for s in series
    ]
    return scored, errors


def task_sound_event_detection(
    task: TaskConfig, column: Any, d: Defaults, device: str
) -> tuple[dict[str, M.Estimate], dict[str, Any]]:
    """``({psds, f1_best}, record fields)`` for one model column (module docstring)."""
    import pandas as pd
    from psds_eval import PSDSEval

    refs, rejects = [], []
    for r in read_corpus(task.corpus):
        (rejects if isinstance(r, Reject) else refs).append(r)
    if not refs:
        raise TaskError(f"no audio files listed by {task.corpus.name} ({len(rejects)} rejected)")
    gt_path = Path(task.ground_truth or "")
    gt_path = gt_path if gt_path.is_absolute() else Path(task.corpus.root) / gt_path
    gt = read_ground_truth(gt_path)
    ids = [r.source_id for r in refs]
    unknown = sorted({g[0] for g in gt} - set(ids))
    if unknown:
        raise TaskError(f"{gt_path}: files not in corpus {task.corpus.name}: {unknown[:5]}")
    classes = sorted({g[3] for g in gt})
    api = api_of(column, d.batch_size, device)
    scored, errors = _frame_scores(task, api, [r.audio for r in refs], classes)
    durations = {
        sid: float(s[1].ends_s[-1]) if s is not None and len(s[1].ends_s) else 0.0
        for sid, s in zip(ids, scored)
    }
    for sid, _, off, _ in gt:  # an undecodable file: its events still count (as misses)
        durations[sid] = max(durations[sid], off)
    opts = task.sed
    ev = PSDSEval(
        opts.dtc_threshold,
        opts.gtc_threshold,
        opts.cttc_threshold,
        ground_truth=pd.DataFrame(gt, columns=list(GT_COLUMNS)),
        metadata=pd.DataFrame(
            [(k, v) for k, v in durations.items() if v > 0], columns=["filename", "duration"]
        ),
        class_names=classes,
        duration_unit=opts.duration_unit,
    )
    ok = [s for s in scored if s is not None]
    if not ok:
        raise TaskError(f"none of the {len(refs)} files could be decoded")
    pooled = np.concatenate([s[0].ravel() for s in ok])
    levels = (np.arange(opts.thresholds) + 0.5) / opts.thresholds
    f1s = []
    t0 = time.perf_counter()
    for th in np.unique(np.quantile(pooled, levels)):
        rows = [
            (sid, on, off, classes[c])
            for sid, s in zip(ids, scored)
            if s is not None
            for on, off, c in events_of(s[0], s[1].starts_s, s[1].ends_s, th)
        ]
        det = pd.DataFrame(rows, columns=list(GT_COLUMNS))
        ev.add_operating_point(det, info={"threshold": float(th)})
        f1s.append(macro_f1(ev, det, len(classes)) if rows else 0.0)
    psds = psds_value(ev, opts)
    log.info(
        "%s: %d operating points scored in %.1f s", task.name, len(f1s), time.perf_counter() - t0
    )
    nan = float("nan")
    metrics = {
        "psds": M.Estimate(float(psds), nan, nan, len(refs)),
        "f1_best": M.Estimate(max(f1s), nan, nan, len(refs)),
    }
    info = {
        "n_items": len(refs),
        "n_rejected": len(rejects),
        "feature_fingerprint": feature_fingerprint(column.cfg.features),
        "undecodable": [{"source_id": ids[e.index], "error": e.reason} for e in errors],
        "reader_rejects": [f"{r.source} ({r.reason})" for r in rejects],
        "n_events": len(gt),
        "classes": classes,
    }
    return metrics, info
