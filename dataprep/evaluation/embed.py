"""Frozen-model embeddings for evaluation.

Audio longer than the model's ``max_frames`` is cut into consecutive windows (the last one
aligned to the clip's end so no frames are dropped); window embeddings of all segments of a
clip are averaged and renormalized, giving one embedding per clip whatever its length.
Text is tokenized exactly as the trainer does (same tokenizer, same max length).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dataprep.core.waveform import mel_windows as windows
from dataprep.evaluation.data import EvalItem
from model.inference import encode_windows
from model.prompts import ensemble
from model.tokenizer import make_tokenize


class Embedder:
    def __init__(
        self, model: Any, cfg: Any, tokenizer: Any, batch_size: int = 32, device: str = "cpu"
    ) -> None:
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = device
        self.max_frames = int(cfg.model.audio.max_frames)
        self.tokenize = make_tokenize(tokenizer, cfg.model.text)  # exactly as the trainer
        # Several tasks share one eval set (ESC-50: zero-shot, probe, few-shot): embed it once.
        # Keyed by the mel bytes themselves, so a hit is the same input by construction.
        self._memo: dict[str, np.ndarray] = {}

    def audio(self, items: Sequence[EvalItem]) -> np.ndarray:
        """``[N, D]`` float32 L2-normalized, one row per item."""
        h = hashlib.sha1()
        for it in items:
            h.update(it.source_id.encode() + b"\x00")
            for mel in it.mels:
                h.update(np.ascontiguousarray(mel).tobytes())
        key = h.hexdigest()
        if key not in self._memo:
            self._memo[key] = self._audio(items)
        return self._memo[key].copy()

    @torch.no_grad()
    def _audio(self, items: Sequence[EvalItem]) -> np.ndarray:
        wins: list[np.ndarray] = []
        owner: list[int] = []
        for i, it in enumerate(items):
            for mel in it.mels:
                for w in windows(mel, self.max_frames):
                    wins.append(w)
                    owner.append(i)
        if not wins:
            raise ValueError("no audio to embed")
        flat = encode_windows(self.model, wins, self.batch_size, self.device)
        out = np.zeros((len(items), flat.shape[1]), dtype=np.float64)
        np.add.at(out, np.asarray(owner), flat)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)

    @torch.no_grad()
    def text(
        self, texts: Sequence[str], langs: str | Sequence[str | None] | None = None
    ) -> np.ndarray:
        """``[N, D]`` of texts; ``langs`` (one code, or one per text) is each text's language,
        tagged as in training when the model uses language tags (model.tokenizer)."""
        if not texts:
            raise ValueError("no text to embed")
        per_text = [langs] * len(texts) if langs is None or isinstance(langs, str) else langs
        embs = []
        for b in range(0, len(texts), self.batch_size):
            batch_langs = list(per_text[b : b + self.batch_size])
            ids, mask = self.tokenize(list(texts[b : b + self.batch_size]), langs=batch_langs)
            e = self.model.encode_text(ids.to(self.device), mask.to(self.device))
            embs.append(e.float().cpu().numpy())
        return np.concatenate(embs).astype(np.float32)

    def class_embeddings(
        self, prompts_per_class: Sequence[Sequence[str]], lang: str | None = None
    ) -> np.ndarray:
        """Prompt ensembling: the mean of a class's prompt embeddings, renormalized; ``lang``
        is the prompts' language."""
        flat = [p for ps in prompts_per_class for p in ps]
        return ensemble(self.text(flat, lang), [len(ps) for ps in prompts_per_class])
