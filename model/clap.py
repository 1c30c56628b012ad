"""CLAP: audio tower + text tower + projections into one L2-normalized space + temperature.

``forward(mel=..., mel_lengths=..., ids=..., mask=...)`` returns a dict with whichever of
``audio_emb`` / ``text_emb`` were asked for, plus ``logit_scale`` (and ``audio_codes`` /
``text_codes`` when the MGA-CLAP shared codebook is on). Training goes through ``forward`` so
that DeepSpeed engines (ZeRO-3 gathers parameters in forward hooks) and the gradient cache see
one call per chunk; ``encode_audio`` / ``encode_text`` / ``logit_scale`` are for evaluation.

Shared codebook (``loss.codebook_size > 0``, MGA-CLAP): ``K`` codewords shared by both
modalities. Each embedding ``e`` gets code weights ``w = softmax(e C^T / 0.1)`` and the output
embedding is ``normalize(e + normalize(w C))`` — both modalities are pulled through the same
codewords, which aligns them at a finer grain than the pooled vectors. The weights are returned
as ``*_codes`` so the loss can regularize codeword usage (see ``model.losses``).

CALM alignment: with ``text.kind: minilm``, ``text.freeze: true``, ``text.project: false`` and
``embed_dim: 384`` the text side is the pretrained MiniLM sentence space itself and only the
audio tower (and its projection) learns to land in it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.audio_encoder import AudioEncoder
from model.config import ModelConfig
from model.text_encoder import TextEncoder

CODE_TEMPERATURE = 0.1


class SharedCodebook(nn.Module):
    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.codes = nn.Parameter(torch.randn(size, dim) / math.sqrt(dim))

    def forward(self, emb: Tensor) -> tuple[Tensor, Tensor]:
        codes = F.normalize(self.codes.float(), dim=-1)  # the loss runs in fp32
        weights = torch.softmax(emb @ codes.t() / CODE_TEMPERATURE, dim=-1)
        return F.normalize(emb + F.normalize(weights @ codes, dim=-1), dim=-1), weights


class CLAP(nn.Module):
    def __init__(self, cfg: ModelConfig, n_mels: int) -> None:
        super().__init__()
        if cfg.init_temperature <= 0 or cfg.max_logit_scale <= 1:
            raise ValueError("init_temperature must be > 0 and max_logit_scale > 1")
        self.cfg = cfg
        self.audio = AudioEncoder(cfg.audio, n_mels)
        self.text = TextEncoder(cfg.text)
        self.audio_proj = nn.Linear(cfg.audio.dim, cfg.embed_dim, bias=False)
        if cfg.text.project:
            self.text_proj: nn.Module = nn.Linear(self.text.out_dim, cfg.embed_dim, bias=False)
        elif self.text.out_dim != cfg.embed_dim:
            raise ValueError(f"text.project=false needs embed_dim == text width "
                             f"{self.text.out_dim}, got {cfg.embed_dim}")
        else:
            self.text_proj = nn.Identity()
        # Shape [1], not 0-d: DeepSpeed's parameter broadcast views params as bytes, which a
        # 0-d tensor cannot do.
        self.log_scale = nn.Parameter(torch.full((1,), math.log(1.0 / cfg.init_temperature)))
        self.codebook = (
            SharedCodebook(cfg.loss.codebook_size, cfg.embed_dim)
            if cfg.loss.codebook_size > 0 else None
        )

    @property
    def uses_own_tokenizer(self) -> bool:
        """True when the text tower needs its own tokenizer (``text.kind: minilm``)."""
        return self.text.uses_own_tokenizer

    def logit_scale(self) -> Tensor:
        # Clamp as open_clip: the temperature may not fall below 1 / max_logit_scale.
        scale = self.log_scale.float().clamp(max=math.log(self.cfg.max_logit_scale)).exp()
        return scale.squeeze(0)

    def _finish(self, emb: Tensor, key: str, out: dict[str, Tensor]) -> None:
        emb = F.normalize(emb.float(), dim=-1)
        if self.codebook is not None:
            emb, weights = self.codebook(emb)
            out[f"{key}_codes"] = weights
        out[f"{key}_emb"] = emb

    def forward(
        self,
        mel: Tensor | None = None,
        mel_lengths: Tensor | None = None,
        ids: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if mel is not None:
            self._finish(self.audio_proj(self.audio(mel, mel_lengths)), "audio", out)
        if ids is not None:
            if mask is None:
                raise ValueError("ids given without mask")
            self._finish(self.text_proj(self.text(ids, mask)), "text", out)
        out["logit_scale"] = self.logit_scale()
        return out

    def encode_audio(self, mel: Tensor, mel_lengths: Tensor | None = None) -> Tensor:
        """L2-normalized audio embeddings ``[B, embed_dim]`` (float32)."""
        return self(mel=mel, mel_lengths=mel_lengths)["audio_emb"]

    def encode_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        """L2-normalized text embeddings ``[B, embed_dim]`` (float32)."""
        return self(ids=ids, mask=mask)["text_emb"]


def build_model(cfg: ModelConfig, n_mels: int) -> CLAP:
    return CLAP(cfg, n_mels)
