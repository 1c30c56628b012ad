"""The body of one shard task (pure, no Ray): process a row range, write the tar + part record.

The part record ``<split>/.parts/<shard>.json`` (index rows, rejects, fingerprints, stats) is
written atomically *after* the tar, so its presence with a matching sha256 marks the shard done.
"""

from __future__ import annotations

import json
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Any

from dataprep import curation
from dataprep.build.finalize import part_path
from dataprep.build.manifest import ref_from_row
from dataprep.build.plan import ShardTask
from dataprep.core import atomic, tario
from dataprep.core.config import DataConfig
from dataprep.core.sample import META, WAVE, Reject
from dataprep.process import SampleProcessor


def process_rows(
    cfg: DataConfig,
    rows: list[dict[str, Any]],
    split: str,
    eval_index: Any,
    keep_wave: bool = False,
) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Every manifest row through one :class:`SampleProcessor`: samples and rejects."""
    proc = SampleProcessor(cfg, augment=True, eval_index=eval_index, keep_wave=keep_wave)
    try:
        res = proc.process((ref_from_row(row) for row in rows), split)
    finally:
        proc.close()
    return res.samples, res.rejects


def curate(
    cfg: DataConfig, samples: list[dict[str, Any]], split: str, score: Any
) -> tuple[list[dict[str, Any]], list[Reject], list[dict[str, Any]]]:
    """``build.curation`` on one shard's samples (``score``: the injected scorer, None when this
    split is not curated): kept samples, ``clap_score_low`` rejects, score rows."""
    c = cfg.build.curation
    rejects: list[Reject] = []
    rows: list[dict[str, Any]] = []
    if score is not None:
        scores = curation.score_samples(samples, score, c.batch_size, cfg.features.sample_rate_hz)
        samples, rejects, rows = curation.curate_shard(samples, scores, c, split)
    for s in samples:
        s.pop(WAVE, None)  # in memory only: never written
    return samples, rejects, rows


def index_row(sample: dict[str, Any], shard: str, split: str) -> dict[str, Any]:
    """The ``index.parquet`` row of one sample."""
    m = sample[META]
    return {
        "key": sample["__key__"],
        "shard": shard,
        "split": split,
        "corpus": m["corpus"],
        "lang": m["lang"],
        "duration": m["duration"],
        "text": sample.get("txt", ""),
        "n_texts": len(m["texts"]),
        "labels": json.dumps(m["labels"], ensure_ascii=False),
        "speaker": m["speaker"],
        "group": m["group"],
        "audio_sha1": m["audio_sha1"],
        "frames": int(sample["mel.npy"].shape[-1]),
    }


def build_shard(
    cfg: DataConfig,
    out: Path,
    task: ShardTask,
    rows: list[dict[str, Any]],
    eval_index: Any,
    node_id: str = "",
    score: Any = None,
) -> dict[str, Any]:
    """Process ``rows`` into ``<out>/<split>/<name>`` and its part record; returns a summary.
    ``score``: the curation scorer (:data:`dataprep.curation.ScoreFn`) for a curated split."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    samples, rejects = process_rows(cfg, rows, task.split, eval_index, score is not None)
    samples, low, score_rows = curate(cfg, samples, task.split, score)
    rejects += low
    fps = [
        {"key": s["__key__"], "pcm": s[META]["audio_sha1"], "fp": s[META].get("audio_fp", "")}
        for s in samples
    ]
    entry = tario.write_tar_atomic(out / task.split / task.name, samples)
    part = {
        "entry": entry,
        "index": sorted((index_row(s, task.name, task.split) for s in samples), key=_key),
        "rejects": [r.as_row() for r in rejects],
        "fingerprints": sorted(fps, key=_key),
        "scores": score_rows,
        "stats": {
            "audio_s": sum(s[META]["duration"] for s in samples),
            "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - cpu0,
            "node_id": node_id,
            "host": platform.node(),
        },
    }
    atomic.atomic_write_json(part_path(out, task.split, task.name), part)
    return {
        "split": task.split,
        "name": task.name,
        "samples": len(samples),
        "rejects": len(rejects),
        **part["stats"],
        "reject_reasons": dict(Counter(r.reason for r in rejects)),
    }


def _key(row: dict[str, Any]) -> str:
    return row["key"]
