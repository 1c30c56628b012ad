"""Stages 4-6, shuffle -> batch -> collate: prepared samples -> padded tensor batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import numpy as np
import torch

from dataprep.core.config import FeatureConfig

Sample = dict[str, Any]
# (texts, langs=<one code per text>) -> (ids LongTensor[B, L], mask BoolTensor[B, L]); picklable
# (sent to worker processes); model.tokenizer.make_tokenize builds it and decides on lang tags
Tokenize = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class BatchSpec(Protocol):
    """The part of the loader's spec that batching and collation read."""

    features: FeatureConfig
    max_frames: int
    batch_size: int
    tokenize: Tokenize | None
    train: bool
    bucket: bool
    bucket_batches: int
    pad_multiple: int
    drop_last: bool
    transcripts: bool


def shuffled(items: Iterable[Sample], size: int, rng: np.random.Generator) -> Iterator[Sample]:
    """A shuffle buffer of ``size`` items (webdataset's): each arrival swaps out a random one."""
    buf: list[Sample] = []
    for item in items:
        buf.append(item)
        if len(buf) >= size:
            j = int(rng.integers(len(buf)))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


def _flush(spec: BatchSpec, pool: list[Sample], rng: np.random.Generator) -> list[list[Sample]]:
    b = spec.batch_size
    if spec.bucket:
        # similar lengths together (less padding); batch order shuffled so lengths mix over time
        pool = sorted(pool, key=lambda s: (s["mel"].shape[1], s["key"]))
    out = [pool[i : i + b] for i in range(0, len(pool), b)]
    if spec.bucket and spec.train:
        full = [x for x in out if len(x) == b]
        rest = [x for x in out if len(x) < b]
        rng.shuffle(full)
        out = full + rest
    return out


def batches(
    spec: BatchSpec, samples: Iterable[Sample], rng: np.random.Generator
) -> Iterator[list[Sample]]:
    """Lists of ``batch_size`` samples; with ``bucket`` sorted by length within a pool of
    ``bucket_batches`` batches. The last short batch is dropped when ``drop_last``."""
    b = spec.batch_size
    pool_size = b * spec.bucket_batches if spec.bucket else b
    pool: list[Sample] = []
    for s in samples:
        pool.append(s)
        if len(pool) >= pool_size:
            yield from _flush(spec, pool, rng)
            pool = []
    for batch in _flush(spec, pool, rng):
        if len(batch) == b or not spec.drop_last:
            yield batch


def collate(spec: BatchSpec, samples: list[Sample]) -> dict[str, Any]:
    """One padded batch (module docstring of :mod:`dataprep.loader` lists its keys)."""
    lengths = [s["mel"].shape[1] for s in samples]
    width = max(lengths) if spec.bucket else spec.max_frames
    m = spec.pad_multiple
    width = min(-(-width // m) * m, max(spec.max_frames, m))
    # the on-disk dtype (float16 by default): half the bytes to move; the trainer casts on device
    dtype = np.float16 if spec.features.dtype == "float16" else np.float32
    # zeros: calloc'd pages, so only the frames written are touched (3 s clips in a 1024-frame
    # batch: 30 %), instead of writing the padding too
    mel = np.zeros((len(samples), spec.features.n_mels, width), dtype=dtype)
    for i, s in enumerate(samples):
        n = min(lengths[i], width)
        mel[i, :, :n] = s["mel"][:, :n]
    texts = [s["text"] for s in samples]
    batch: dict[str, Any] = {
        "mel": torch.from_numpy(mel),
        "mel_lengths": torch.tensor([min(n, width) for n in lengths], dtype=torch.long),
        "groups": torch.tensor([s["group"] for s in samples], dtype=torch.long),
        "labels": [s["labels"] for s in samples],
        "keys": [s["key"] for s in samples],
        "corpora": [s["corpus"] for s in samples],
        "langs": [s["lang"] for s in samples],
        "texts": texts,
        "text_langs": [s["text_lang"] for s in samples],
        "duration_s": torch.tensor([s["duration_s"] for s in samples], dtype=torch.float32),
    }
    if spec.tokenize is not None:
        batch["ids"], batch["mask"] = spec.tokenize(texts, langs=batch["text_langs"])
    if spec.transcripts and spec.tokenize is not None:
        # CALM's multimodal path: the samples' fed transcripts ("" = audio alone: no token)
        words = [s.get("transcript") or "" for s in samples]
        batch["tr_ids"], tr_mask = spec.tokenize(words)
        batch["tr_mask"] = tr_mask & torch.tensor([bool(w) for w in words])[:, None]
    return batch
