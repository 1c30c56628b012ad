"""CLAP-score curation: what DataComp does with CLIP scores, for audio (``build.curation``).

A scoring model (injected: ``dataprep`` never imports ``model``; the entry script builds a
scorer factory and the executor runs it in a Ray actor) gives every (audio, text) pair of a
sample the cosine of their embeddings. The sample is decided on its primary text (``txt``,
``texts[0]``); the other texts' scores are recorded for the report. Two cuts:

- ``min_score`` (absolute): decided inside the shard task; the sample never reaches the tar, a
  reject row (stage ``curation``, reason ``clap_score_low``, the score in its detail) does.
- ``percentile`` (relative to the corpus, or to every curated sample with ``per: all``): needs
  every score first, so it is decided when the build is finalized, from the scores the part
  records hold (every input of a finished shard, kill -9 resume included): the sample stays in
  its tar and is listed in ``shards.json``'s ``exclude`` (as cross-shard duplicates are), with
  its reject row. A pure function of the recorded scores, so a rerun decides the same.

Scores are rounded to :data:`DIGITS` decimals before anything is decided or written, so a
shard's bytes do not depend on float noise of the scoring hardware. Kept samples carry
``stats.clap_score``; ``<split>/scores.parquet`` holds one row per scored pair.
Audio views (``build.augment.audio_views``) are not scored: they follow their clip.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dataprep.core.config import CurationConfig
from dataprep.core.sample import META, WAVE, Reject

STAGE = "curation"
REASON_LOW = "clap_score_low"
REASON_ERROR = "clap_score_error"  # the scoring model could not embed the audio (NaN)
SCORE_KEY = "clap_score"  # in a kept sample's ``stats``
SCORES = "scores.parquet"
DIGITS = 4
KEPT = "kept"

# (waves at ``sample_rate``, per sample its texts) -> per sample one cosine per text
ScoreFn = Callable[[list[np.ndarray], int, list[list[str]]], list[list[float]]]

SCORES_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("corpus", pa.string()),
        ("split", pa.string()),
        ("lang", pa.string()),
        ("kind", pa.string()),
        ("text_index", pa.int32()),
        ("primary", pa.bool_()),
        ("score", pa.float64()),
        ("decision", pa.string()),  # kept | clap_score_low | clap_score_error
        ("text", pa.string()),
    ]
)


def base_key(key: str, corpus: str) -> str:
    """The clip an audio view belongs to (``<corpus>-<16 hex>v<i>`` -> ``<corpus>-<16 hex>``)."""
    return key[: len(corpus) + 17]


def rounded(v: float) -> float:
    return round(float(v), DIGITS) if math.isfinite(v) else math.nan


def score_samples(
    samples: list[dict[str, Any]], score: ScoreFn, batch_size: int, sample_rate: int
) -> dict[str, list[float]]:
    """Per clip key, one rounded score per text; views and samples without text are skipped."""
    clips = [
        s
        for s in samples
        if s[META]["texts"] and base_key(s["__key__"], s[META]["corpus"]) == s["__key__"]
    ]
    out: dict[str, list[float]] = {}
    for i in range(0, len(clips), batch_size):
        batch = clips[i : i + batch_size]
        texts = [[t["text"] for t in s[META]["texts"]] for s in batch]
        got = score([s[WAVE] for s in batch], sample_rate, texts)
        if len(got) != len(batch) or any(len(g) != len(t) for g, t in zip(got, texts)):
            raise RuntimeError("the scorer returned a different number of scores than pairs")
        for s, scores in zip(batch, got):
            out[s["__key__"]] = [rounded(x) for x in scores]
    return out


def _reject(meta: dict[str, Any], key: str, reason: str, detail: str) -> Reject:
    return Reject(key, STAGE, reason, f"{detail} ({meta['source_id']})", meta["corpus"])


def _decide(score: float, cfg: CurationConfig) -> str:
    if not math.isfinite(score):
        return REASON_ERROR
    if cfg.min_score is not None and score < cfg.min_score:
        return REASON_LOW
    return KEPT


def _rows(meta: dict[str, Any], key: str, split: str, scores: list[float], decision: str):
    for i, (t, sc) in enumerate(zip(meta["texts"], scores)):
        yield {
            "key": key, "corpus": meta["corpus"], "split": split, "lang": t["lang"] or "",
            "kind": t["kind"], "text_index": i, "primary": i == 0, "score": sc,
            "decision": decision, "text": t["text"],
        }  # fmt: skip


def curate_shard(
    samples: list[dict[str, Any]],
    scores: dict[str, list[float]],
    cfg: CurationConfig,
    split: str,
) -> tuple[list[dict[str, Any]], list[Reject], list[dict[str, Any]]]:
    """Apply ``min_score`` to one shard's samples: ``(kept, rejects, score rows)``. A kept clip
    and its views get ``stats.clap_score``; a rejected clip's views go with it."""
    decision: dict[str, str] = {}
    rejects: list[Reject] = []
    rows: list[dict[str, Any]] = []
    for s in samples:
        key, meta = s["__key__"], s[META]
        if key not in scores:
            continue
        primary = scores[key][0]
        decision[key] = d = _decide(primary, cfg)
        rows.extend(_rows(meta, key, split, scores[key], d))
        if d == REASON_LOW:
            why = f"clap score {primary:.4f} < min_score {cfg.min_score:.4f}"
            rejects.append(_reject(meta, key, d, f"{why}; text {meta['texts'][0]['text']!r}"))
        elif d == REASON_ERROR:
            rejects.append(_reject(meta, key, d, "the scoring model could not embed the audio"))
    kept = []
    for s in samples:
        clip = base_key(s["__key__"], s[META]["corpus"])
        if decision.get(clip, KEPT) != KEPT:
            continue
        if clip in scores:
            s[META]["stats"] = {**s[META]["stats"], SCORE_KEY: scores[clip][0]}
        kept.append(s)
    return kept, rejects, rows


@dataclass
class Finalized:
    """The percentile decision over every part record's score rows."""

    excluded: dict[str, dict[str, str] | None] = field(default_factory=dict)  # key -> reject
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # split -> score rows
    cuts: dict[str, float] = field(default_factory=dict)  # group -> percentile score


def percentile_cuts(rows: Iterable[dict[str, Any]], cfg: CurationConfig) -> dict[str, float]:
    """Per group (corpus, or ``all``), the ``percentile``-th percentile of the primary scores of
    every scored clip (those ``min_score`` dropped included: the pool is what was scored)."""
    if cfg.percentile is None:
        return {}
    groups: dict[str, list[float]] = {}
    for r in rows:
        if r["primary"] and math.isfinite(r["score"]):
            g = r["corpus"] if cfg.per == "corpus" else "all"
            groups.setdefault(g, []).append(r["score"])
    return {
        g: rounded(np.percentile(np.sort(np.asarray(v)), cfg.percentile))
        for g, v in sorted(groups.items())
    }


def finalize_scores(parts: list[dict[str, Any]], cfg: CurationConfig) -> Finalized:
    """Exclusions by percentile (clips and their views) and the final score rows per split."""
    out = Finalized()
    all_rows = [dict(r) for p in parts for r in p.get("scores", [])]
    out.cuts = percentile_cuts(all_rows, cfg)
    low: set[str] = set()
    for r in all_rows:
        cut = out.cuts.get(r["corpus"] if cfg.per == "corpus" else "all")
        if r["decision"] == KEPT and cut is not None and r["score"] < cut and r["primary"]:
            low.add(r["key"])
            out.excluded[r["key"]] = {
                "source": r["key"], "corpus": r["corpus"], "stage": STAGE, "reason": REASON_LOW,
                "detail": f"clap score {r['score']:.4f} < {cut:.4f}, the {cfg.percentile:g}th "
                f"percentile of {'corpus ' + r['corpus'] if cfg.per == 'corpus' else 'all'} "
                f"(key excluded); text {r['text']!r}",
            }  # fmt: skip
    for r in all_rows:
        if r["key"] in low:
            r["decision"] = REASON_LOW
        out.rows.setdefault(r["split"], []).append(r)
    for p in parts:  # views of an excluded clip go with it, without a row of their own
        for r in p["index"]:
            if r["key"] not in out.excluded and base_key(r["key"], r["corpus"]) in low:
                out.excluded[r["key"]] = None
    return out


_DIGESTS: dict[tuple[Any, ...], str] = {}


def model_digest(path: str | Path) -> str:
    """sha256 (16 hex) over the scoring model directory's files (names, bytes): part of the
    build signature, so a rerun with other weights under the same path is refused. Memoized
    on the files' names, sizes and mtimes (the signature is taken several times a build)."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    stamp = (
        str(root.resolve()),
        *((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files),
    )
    if stamp in _DIGESTS:
        return _DIGESTS[stamp]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    _DIGESTS[stamp] = h.hexdigest()[:16]
    return _DIGESTS[stamp]
