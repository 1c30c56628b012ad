"""Inference building blocks behind :class:`model.api.CLAP`, shared with the evaluator.

:func:`encode_windows` is the one batching of feature windows into audio embeddings (the
evaluation harness's ``Embedder`` and the API both call it); :func:`clap_features` is the
preprocessing an imported transformers ``ClapModel`` directory carries.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dataprep.core.config import AudioConfig, FeatureConfig
from dataprep.core.storage import StorageError


class ModelDirError(ValueError):
    """A directory that is not a polyclap export or a transformers ClapModel (one line)."""


# What loading a model or reading a command's inputs raises for bad input: the command lines
# print it as one line and exit 2 (ModelDirError, HFLoadError and FingerprintMismatch are
# ValueErrors; a missing file or unreadable folder an OSError).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, StorageError)


def one_line(err: BaseException) -> str:
    """``err``'s message on one line (a multi-line message joined with `` | ``)."""
    return " | ".join(x.strip() for x in str(err).splitlines() if x.strip())


@dataclass(frozen=True)
class Preprocessing:
    """What turns a file into model inputs (the model's, saved with it)."""

    features: FeatureConfig
    audio: AudioConfig | None  # loudness normalization; None: none (imported LAION-CLAP)
    segment_s: float  # long audio is cut into segments of this length (build.audio.max_segment_s)
    overlap_s: float
    max_frames: int  # each segment's features in windows of at most this many frames

    @classmethod
    def of(cls, cfg: Any) -> Preprocessing:
        """A polyclap model's, from its ExperimentConfig (build audio settings, features)."""
        a = cfg.build.audio
        return cls(
            cfg.features, a, a.max_segment_s, a.segment_overlap_s, int(cfg.model.audio.max_frames)
        )


@dataclass(frozen=True)
class ItemError:
    """An input that could not be embedded: its position, name and why."""

    index: int
    name: str
    reason: str
    detail: str


@dataclass(frozen=True)
class Windows:
    """``per_window=True``: one embedding per model input of a clip, with its time span."""

    embeddings: np.ndarray  # [W, D]
    starts_s: np.ndarray
    ends_s: np.ndarray


def as_list(x: Any) -> list[Any]:
    if isinstance(x, (str, os.PathLike)) or (
        isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 1
    ):
        return [x]
    return list(x)


def checked_transcripts(cfg: Any, transcripts: Any, n: int) -> list[str] | None:
    """``embed_audio``'s ``transcripts``, one string per item ("" for none), or None; a
    ValueError when the model was not trained to read them or the count is wrong."""
    if transcripts is None:
        return None
    calm = getattr(getattr(cfg, "model", None), "calm", None)
    if not (calm is not None and calm.with_transcript):
        raise ValueError(
            "transcripts given, but this model was not trained to read them "
            "(model.calm.with_transcript is off)"
        )
    if isinstance(transcripts, str) or len(transcripts) != n:
        raise ValueError(f"give one transcript (or None) per audio item: {n} items")
    return [t or "" for t in transcripts]


@torch.no_grad()
def encode_windows(
    net: Any,
    windows: Sequence[np.ndarray],
    batch_size: int,
    device: Any,
    progress: bool = False,
    transcripts: tuple[Sequence[str], Any] | None = None,
) -> np.ndarray:
    """``[N, D]`` audio embeddings of feature windows ``[n_mels, t]``, zero-padded per batch
    with their true lengths (the evaluator's and inference's one batching). ``transcripts``:
    ``(one text per window, "" for none; the model's tokenize)`` for CALM with the transcript,
    tokenized as the loader's collate does (a window without one reads the audio alone)."""
    out = []
    steps = range(0, len(windows), batch_size)
    for b in tqdm(steps, desc="audio", unit="batch", disable=not progress):
        chunk = windows[b : b + batch_size]
        width = max(w.shape[1] for w in chunk)
        mel = np.zeros((len(chunk), chunk[0].shape[0], width), dtype=np.float32)
        for j, w in enumerate(chunk):
            mel[j, :, : w.shape[1]] = w
        lengths = torch.tensor([w.shape[1] for w in chunk], dtype=torch.long, device=device)
        tr: dict[str, Any] = {}
        if transcripts is not None:
            words = list(transcripts[0][b : b + batch_size])
            ids, mask = transcripts[1](words)
            mask = mask & torch.tensor([bool(w) for w in words])[:, None]
            tr = {"tr_ids": ids.to(device), "tr_mask": mask.to(device)}
        emb = net.encode_audio(torch.from_numpy(mel).to(device), lengths, **tr)
        out.append(emb.float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def transformers_model_type(path: Path) -> str | None:
    """The ``model_type`` of a transformers directory's config.json, else None."""
    f = path / "config.json"
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return data.get("model_type") if isinstance(data, dict) else None


def clap_features(path: Path) -> FeatureConfig:
    """The htsat preset of a ClapModel directory: its ``preprocessor_config.json`` (if saved)
    sets the mel bins and band; any other extractor setting the preset fixes must agree."""
    f = path / "preprocessor_config.json"
    pre = json.loads(f.read_text()) if f.is_file() else {}
    fields: dict[str, Any] = {"preset": "htsat", "dtype": "float32"}
    for ours, theirs in (
        ("n_mels", "feature_size"),
        ("f_min_hz", "frequency_min"),
        ("f_max_hz", "frequency_max"),
    ):
        if theirs in pre:
            fields[ours] = pre[theirs]
    fixed = {
        "sampling_rate": 48000,
        "hop_length": 480,
        "fft_window_size": 1024,
        "truncation": "rand_trunc",
        "padding": "repeatpad",
    }
    bad = {k: pre[k] for k, want in fixed.items() if k in pre and pre[k] != want}
    if bad:
        raise ModelDirError(f"{f}: {bad} differ from the htsat preset {fixed} (LAION-CLAP's)")
    if not math.isfinite(float(fields.get("f_max_hz", 14000.0))):
        raise ModelDirError(f"{f}: frequency_max is not finite")
    return FeatureConfig(**fields)
