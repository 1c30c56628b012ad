"""Frame-level alignment (MGA-CLAP): frame embeddings in the shared space, frames x texts.

A frame is one output step of the audio tower (the patch tower: one time patch,
``patch_time`` feature frames). Its embedding lives in the space its clip embedding is built in:

- shared codebook on (``model.loss.codebook_size > 0``): ``frame_proj`` of the frame features,
  the very vectors the codebook aggregates into the clip embedding; the texts are compared
  through the same codebook (their ``w C``, from ``word_proj`` of the word features), as
  MGA-CLAP does for sound-event detection and grounding;
- codebook off: the clip embedding's own projection ``audio_proj`` applied to each frame,
  compared with the ordinary text embeddings.

With ``model.audio.locality_blocks > 0`` the frame features come from MGA-CLAP's
locality-aware path (``model.audio_encoder``), otherwise from the main path's tokens.
:class:`FrameAlignment` adds ``frame_embeddings`` / ``frame_similarity`` to ``model.CLAP``;
audio takes exactly the path of ``embed_audio`` (decode, normalize, windows, no trim), so frame
times are seconds from the start of the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dataprep.core.decode import AudioError
from model.inference import ItemError, as_list

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameSeries:
    """Frame embeddings of one file, ``[T, E]`` L2-normalized, with each frame's span in s."""

    embeddings: np.ndarray
    starts_s: np.ndarray
    ends_s: np.ndarray


@dataclass(frozen=True)
class FrameSimilarity:
    """Cosine similarity of each frame with each text: ``scores [T, C]``, frame spans in s."""

    scores: np.ndarray
    starts_s: np.ndarray
    ends_s: np.ndarray
    texts: tuple[str, ...]


def _check_frames(net: Any) -> None:
    if net.codebook is None and net.calm_in is not None:
        # CALM's audio embedding is the text model's output: a frame has no such projection
        raise ValueError(
            "frame embeddings need model.loss.codebook_size > 0 with model.calm.enabled "
            "(audio_proj reads the text model's output, not audio frames)"
        )


def frame_embeddings(net: Any, mel: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(embeddings [B, t, E] L2-normalized float32, valid [B, t])`` in the shared space."""
    _check_frames(net)
    _, frames, valid = net.audio(mel, lengths, return_frames=True)
    proj = net.frame_proj if net.codebook is not None else net.audio_proj
    return F.normalize(proj(frames).float(), dim=-1), valid


def text_embeddings(net: Any, ids: Tensor, mask: Tensor) -> Tensor:
    """``[N, E]`` L2-normalized texts in the space frames are compared in (see module doc)."""
    if net.codebook is None:
        return net.encode_text(ids, mask)
    _, words, wmask = net.text(ids, mask, return_tokens=True)
    return F.normalize(net.codebook(net.word_proj(words), wmask), dim=-1)


def frame_seconds(net: Any, n_in: int, n_out: int, hop_s: float) -> float:
    """Seconds per output frame of a window of ``n_in`` feature frames."""
    cfg = net.cfg.audio
    if cfg.kind == "patch":
        return cfg.patch_time * hop_s
    # a transformers tower reads a fixed input (cropped / padded to ``frames``)
    return max(n_in, int(net.audio.frames)) * hop_s / n_out


@torch.no_grad()
def encode_frame_windows(
    net: Any,
    windows: Sequence[tuple[float, float, np.ndarray]],
    hop_s: float,
    batch_size: int,
    device: Any,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per window ``(start_s, end_s, features)`` (feature hop ``hop_s``): ``(embeddings,
    starts_s, ends_s)`` of its valid frames, batched and zero-padded with true lengths as
    ``model.inference.encode_windows`` does."""
    out = []
    for b in range(0, len(windows), batch_size):
        chunk = windows[b : b + batch_size]
        width = max(w[2].shape[1] for w in chunk)
        mel = np.zeros((len(chunk), chunk[0][2].shape[0], width), dtype=np.float32)
        for j, (_, _, feat) in enumerate(chunk):
            mel[j, :, : feat.shape[1]] = feat
        lengths = torch.tensor([w[2].shape[1] for w in chunk], dtype=torch.long, device=device)
        emb, valid = frame_embeddings(net, torch.from_numpy(mel).to(device), lengths)
        emb, valid = emb.cpu().numpy(), valid.cpu().numpy()
        for j, (start, end, feat) in enumerate(chunk):
            n = int(valid[j].sum())
            spf = frame_seconds(net, feat.shape[1], emb.shape[1], hop_s)
            starts = start + np.arange(n) * spf
            keep = starts < end - 1e-9  # a padded tower's frames past the window's end
            out.append((emb[j, :n][keep], starts[keep], np.minimum(starts[keep] + spf, end)))
    return out


def stitch(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], dim: int) -> FrameSeries:
    """One time series from a file's windows: a frame that starts before the last kept frame
    ends (windows overlap: segment overlap, the last window aligned to the end) is skipped."""
    embs, starts, ends = [], [], []
    last_end = -np.inf
    for emb, s, e in parts:
        for k in range(len(s)):
            if s[k] >= last_end - 1e-6:
                embs.append(emb[k])
                starts.append(s[k])
                ends.append(e[k])
                last_end = e[k]
    if not embs:
        return FrameSeries(np.zeros((0, dim), np.float32), np.zeros(0), np.zeros(0))
    return FrameSeries(np.stack(embs).astype(np.float32), np.asarray(starts), np.asarray(ends))


class FrameAlignment:
    """``frame_embeddings`` / ``frame_text_embeddings`` / ``frame_similarity`` for
    :class:`model.api.CLAP` (which provides ``net``, ``inputs``, ``tokenize``, ``device``)."""

    net: Any
    pre: Any  # model.inference.Preprocessing
    device: torch.device
    batch_size: int
    tokenize: Any

    def frame_embeddings(
        self, audio: Any, sample_rate: int | None = None, return_errors: bool = False
    ) -> Any:
        """One :class:`FrameSeries` per file or array (None for one that cannot be read; with
        ``return_errors`` also the :class:`~model.inference.ItemError` list)."""
        items = as_list(audio)
        out: list[FrameSeries | None] = []
        errors: list[ItemError] = []
        for i, item in enumerate(items):
            name = str(item) if isinstance(item, (str, os.PathLike)) else f"array[{i}]"
            try:
                wins = self.inputs(item, sample_rate, name)  # type: ignore[attr-defined]
            except AudioError as err:
                errors.append(ItemError(i, name, err.reason, err.detail))
            except (OSError, ValueError, RuntimeError) as err:  # bad input: a row, not a crash
                errors.append(ItemError(i, name, "decode_error", f"{type(err).__name__}: {err}"))
            else:
                hop_s = self.pre.features.hop_length / self.pre.features.sample_rate_hz
                parts = encode_frame_windows(self.net, wins, hop_s, self.batch_size, self.device)
                out.append(stitch(parts, int(self.net.cfg.embed_dim)))
                continue
            log.warning("frame_embeddings: %s skipped (%s)", name, errors[-1].reason)
            out.append(None)
        return (out, errors) if return_errors else out

    @torch.no_grad()
    def frame_text_embeddings(self, texts: str | Sequence[str]) -> np.ndarray:
        """``[N, E]`` texts in the space of the frame embeddings (module docstring)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("no texts to embed")
        out = []
        for b in range(0, len(texts), self.batch_size):
            ids, mask = self.tokenize(texts[b : b + self.batch_size])
            emb = text_embeddings(self.net, ids.to(self.device), mask.to(self.device))
            out.append(emb.float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def frame_similarity(
        self, audio: Any, texts: str | Sequence[str], sample_rate: int | None = None
    ) -> Any:
        """Frames x texts cosine time series: a :class:`FrameSimilarity` for one file or 1-D
        array, a list (None for unreadable items) for several."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        temb = self.frame_text_embeddings(texts)
        series = self.frame_embeddings(audio, sample_rate)
        out = [
            None
            if s is None
            else FrameSimilarity(s.embeddings @ temb.T, s.starts_s, s.ends_s, tuple(texts))
            for s in series
        ]
        single = len(as_list(audio)) == 1 and not isinstance(audio, (list, tuple))
        return out[0] if single else out
