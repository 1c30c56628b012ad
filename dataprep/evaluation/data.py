"""Evaluation items: corpus reader -> the training SampleProcessor -> log-mel, cached.

Evaluation audio goes through exactly the code training audio went through (decode, resample,
loudness-normalize, trim, segment, log-mel with the model's feature config), so the feature
fingerprint of an evaluation set equals the model's by construction. Text augmentation,
deduplication and the training *filters* are off: an evaluation set is scored as published,
every item the reader lists counted. A 1-s keyword that trims to 0.28 s is still a test item
(the benchmark scores it), so no duration, silence, clipping or text-rate bound drops it. An item
the processor still cannot turn into features (undecodable audio, a hard text check) stays in
the set with ``error`` set and no mels: the tasks score it as wrong and the table lists it.
Rows the reader itself rejects (no usable metadata, so no label to score against) are kept in
``EvalSet.rejects`` and listed too.

The featurized set is cached under ``<cache_dir>/<fingerprint>/<corpus-hash>.npz`` (+ ``.json``):
the file name hashes the corpus config, the audio/filter settings and what the reader lists
(every item's metadata plus the size and mtime of local audio files, so an edited or replaced
corpus is featurized again); the directory is the feature fingerprint, so a model with other
features never reads these numbers.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dataprep.core.atomic import atomic_write_bytes, atomic_write_json
from dataprep.core.config import CorpusConfig, DataConfig
from dataprep.core.features import check_fingerprint, feature_fingerprint
from dataprep.core.sample import KIND_ORIGINAL, MEL, META, Reject, SampleRef
from dataprep.corpora import read_corpus
from dataprep.process import _SPLIT_ALIASES, SampleProcessor
from dataprep.text import normalize_text

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when what is stored per item changes (2: undecodable items kept)

# Filters that never reject: evaluation scores what the benchmark lists, not what training keeps.
_NO_FILTERS = {
    "min_duration_s": 0.0,
    "max_source_duration_s": 1e12,
    "silence_dbfs": -1e9,
    "max_clip_ratio": 1.0,
    "min_chars_per_s": 0.0,
    "max_chars_per_s": 1e12,
    "min_text_chars": 0,
    "require_text": False,
    "lang_mismatch": "ignore",
}


@dataclass
class EvalItem:
    """One source clip of an evaluation set (segments of a long clip stay together)."""

    source_id: str
    labels: list[str]
    texts: list[str]  # reference texts: original caption(s) / transcript
    lang: str | None
    split: str | None
    speaker: str | None
    group: str
    attributes: dict[str, Any]
    error: str | None = None  # why no features exist ("decode:not_audio: ..."); scored as wrong
    mels: list[np.ndarray] = field(default_factory=list)  # one [n_mels, T] per segment

    @property
    def scorable(self) -> bool:
        return bool(self.mels)


@dataclass
class EvalSet:
    corpus: str
    fingerprint: str
    items: list[EvalItem]
    rejects: list[dict[str, str]]
    cache_file: str | None = None
    from_cache: bool = False


def _mapped_split(split: str | None) -> str | None:
    return _SPLIT_ALIASES.get(split.lower(), split) if split else None


def eval_processing_config(cfg: DataConfig) -> DataConfig:
    """The model's config with deduplication and filters off (an eval set keeps every clip).

    Decoding, normalization, trimming, segmenting and features stay exactly the model's.
    """
    b = cfg.build
    dedup = b.dedup.model_copy(update={"exact": False, "near": False, "decontaminate": False})
    filters = b.filters.model_copy(update=_NO_FILTERS)
    # A long transcribed test utterance is scored whole (the embedder windows and averages
    # it), up to the decode bound that windowed audio has anyway.
    a = b.audio
    bound_s = a.max_segment_s * a.max_segments_per_source
    audio = a.model_copy(update={"max_transcript_s": max(a.max_transcript_s, bound_s)})
    build = b.model_copy(update={"dedup": dedup, "filters": filters, "audio": audio})
    return cfg.model_copy(update={"build": build})


def _listing_digest(listing: list[SampleRef | Reject]) -> str:
    h = hashlib.sha256()
    for item in listing:
        h.update(repr(item).encode())
        if isinstance(item, SampleRef) and "://" not in item.audio:
            try:
                st = os.stat(item.audio)
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                h.update(b"missing")
    return h.hexdigest()


def cache_key(cfg: DataConfig, corpus: CorpusConfig, listing: list[SampleRef | Reject]) -> str:
    blob = json.dumps(
        {
            "v": CACHE_VERSION,
            "corpus": corpus.model_dump(mode="json"),
            "audio": cfg.build.audio.model_dump(mode="json"),
            "filters": cfg.build.filters.model_dump(mode="json"),
            "listing": _listing_digest(listing),
        },
        sort_keys=True,
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _item_from_sample(ref: SampleRef, meta: dict[str, Any]) -> EvalItem:
    originals = [
        t["text"] for t in meta.get("texts", []) if t.get("kind") == KIND_ORIGINAL and t["text"]
    ]
    if ref.text is None and not ref.captions:
        originals = []  # label-only clips: the label text is not a reference caption
    return _item(ref, originals, meta.get("lang") or ref.lang)


def _failed_item(ref: SampleRef, rejects: list[Reject]) -> EvalItem:
    """An item without features: its references (same normalization as the processor's) stay,
    so a retrieval query for it still exists and is scored as a miss."""
    texts = []
    for t in (ref.text, *ref.captions):
        norm = normalize_text(t, ref.lang) if t else None
        if norm and norm not in texts:
            texts.append(norm)
    why = "; ".join(f"{r.stage}:{r.reason}: {r.detail}" for r in rejects) or "no segments"
    item = _item(ref, texts, ref.lang)
    item.error = why
    return item


def _item(ref: SampleRef, texts: list[str], lang: str | None) -> EvalItem:
    return EvalItem(
        source_id=ref.source_id,
        labels=list(ref.labels),
        texts=texts,
        lang=lang,
        split=_mapped_split(ref.split),
        speaker=ref.speaker,
        group=str(ref.extra_dict().get("group") or ref.speaker or ref.source_id),
        attributes={
            k: v for k, v in ref.extra_dict().items() if isinstance(v, (str, int, float, bool))
        },
    )


def _save(path: Path, es: EvalSet) -> None:
    mels = [m for it in es.items for m in it.mels]
    lengths = np.asarray([m.shape[1] for m in mels], dtype=np.int64)
    seg_counts = np.asarray([len(it.mels) for it in es.items], dtype=np.int64)
    n_mels = mels[0].shape[0] if mels else 0
    flat = np.concatenate(mels, axis=1) if mels else np.zeros((0, 0), np.float16)
    buf = io.BytesIO()
    np.savez(buf, mel=flat, lengths=lengths, seg_counts=seg_counts, n_mels=np.int64(n_mels))
    atomic_write_bytes(path.with_suffix(".npz"), buf.getvalue())
    items = [{k: v for k, v in it.__dict__.items() if k != "mels"} for it in es.items]
    # the .json is written last: it is the cache entry's commit marker
    atomic_write_json(
        path.with_suffix(".json"),
        {"corpus": es.corpus, "fingerprint": es.fingerprint, "items": items, "rejects": es.rejects},
    )


def _load(path: Path) -> EvalSet | None:
    jp, npz = path.with_suffix(".json"), path.with_suffix(".npz")
    if not (jp.is_file() and npz.is_file()):
        return None
    try:
        meta = json.loads(jp.read_text())
        with np.load(npz, allow_pickle=False) as z:
            flat, lengths, seg_counts = z["mel"], z["lengths"], z["seg_counts"]
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring unreadable eval cache %s: %s", path, e)
        return None
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items, seg = [], 0
    for d, count in zip(meta["items"], seg_counts):
        it = EvalItem(**d)
        it.mels = [flat[:, offsets[s] : offsets[s + 1]] for s in range(seg, seg + int(count))]
        seg += int(count)
        items.append(it)
    return EvalSet(meta["corpus"], meta["fingerprint"], items, meta["rejects"], str(path), True)


def load_eval_set(
    cfg: DataConfig, corpus: CorpusConfig, cache_dir: str | Path | None = None
) -> EvalSet:
    """Every item of ``corpus`` featurized with ``cfg``'s features (from cache when present)."""
    fp = feature_fingerprint(cfg.features)
    listing = list(read_corpus(corpus))  # metadata only: cheap next to decoding
    path = (
        Path(cache_dir) / fp / f"{corpus.name}-{cache_key(cfg, corpus, listing)}"
        if cache_dir
        else None
    )
    if path is not None:
        cached = _load(path)
        if cached is not None:
            check_fingerprint(
                cfg.features, cached.fingerprint, where=f"eval cache {path}", expected=fp
            )
            log.info("eval set %s: %d items from cache %s", corpus.name, len(cached.items), path)
            return cached
    proc = SampleProcessor(eval_processing_config(cfg), augment=False)
    items: list[EvalItem] = []
    rejects: list[dict[str, str]] = []
    try:
        for ref in listing:
            if isinstance(ref, Reject):
                rejects.append(ref.as_row())
                continue
            res = proc(ref, _mapped_split(ref.split) or "test")
            if not res.samples:
                items.append(_failed_item(ref, res.rejects))
                continue
            item = _item_from_sample(ref, res.samples[0][META])
            for s in res.samples:
                # equal by construction; refused by name should the processor ever diverge
                check_fingerprint(
                    cfg.features,
                    s[META]["feature_fingerprint"],
                    where=f"eval sample {s['__key__']}",
                    expected=fp,
                )
                item.mels.append(np.asarray(s[MEL]))
            items.append(item)
    finally:
        proc.close()
    es = EvalSet(corpus.name, fp, items, rejects, str(path) if path else None, False)
    if rejects:
        log.warning(
            "eval set %s: %d rows rejected by the reader (%s)",
            corpus.name,
            len(rejects),
            sorted({r["reason"] for r in rejects}),
        )
    failed = [it for it in items if not it.scorable]
    if failed:
        named = "; ".join(f"{it.source_id} ({it.error})" for it in failed[:5])
        log.warning(
            "eval set %s: %d items have no features and are scored as wrong: %s",
            corpus.name,
            len(failed),
            named,
        )
    if path is not None and items:
        _save(path, es)
    log.info("eval set %s: %d items featurized", corpus.name, len(items))
    return es


def select(es: EvalSet, split: str | None, max_items: int | None = None) -> list[EvalItem]:
    items = [it for it in es.items if split is None or it.split == split]
    return items[:max_items] if max_items is not None else items
