"""CLAP: audio tower + text tower + projections into one L2-normalized space + temperature.

``forward(mel=..., mel_lengths=..., ids=..., mask=...)`` returns a dict with whichever of
``audio_emb`` / ``text_emb`` were asked for, plus ``logit_scale`` (and the codebook embeddings
``audio_codes`` / ``text_codes`` ``[B, embed_dim]`` when the MGA-CLAP shared codebook is on).
Training goes through ``forward`` so that DeepSpeed engines (ZeRO-3 gathers parameters in
forward hooks) and the gradient cache see one call per chunk; ``encode_audio`` /
``encode_text`` / ``logit_scale`` are for evaluation.

Shared codebook (``loss.codebook_size > 0``, MGA-CLAP): ``K`` codewords ``C`` shared by both
modalities. Frame features (audio, per time patch) and word features (text, per token) are
projected to ``embed_dim``; each codeword's affinity is its best match over the valid frames /
words (``max_t f_t . c_k / sqrt(E)``), sparsemax turns the affinities into sparse code weights,
and ``w C`` is the fine-grained embedding. Deliberate deviation from MGA-CLAP, which uses only
that embedding: ours is ``normalize(normalize(pooled proj) + normalize(w C))``, so the coarse
pooled path (CLS / attentive / multirate pooling) keeps contributing and every parameter gets a
gradient. ``w C`` is returned as ``audio_codes`` / ``text_codes`` for the loss's sparsity
regularizer (MGA-CLAP's L1/L2 ratio, see ``model.losses``).

CALM alignment: with ``text.kind: minilm``, ``text.freeze: true``, ``text.project: false`` and
``embed_dim: 384`` the text side is the pretrained MiniLM sentence space itself and only the
audio tower (and its projection) learns to land in it.

CALM's alignment proper (``model.calm.enabled``, needs ``text.kind: hf``): the audio tower's
frame features go through ``calm_in`` into the text model's input-embedding space and through
the (shared, optionally locked) text model itself; its pooled output, projected, is the audio
embedding. Text embeddings are computed as usual, so both modalities leave the same network.
With ``model.calm.with_transcript`` the language model reads the acoustic tokens followed by the
transcript's token embeddings (``tr_ids`` / ``tr_mask``, tokenized by the text tower's own
tokenizer, its special tokens kept as the separator), CALM's multimodal transformer
(Sachidananda et al. 2022, arXiv:2202.03587); a row whose ``tr_mask`` is all False is exactly
the audio-alone path. Which samples get a transcript (never one that would leak the paired text)
is the loader's rule, ``dataprep.loader.sample.calm_transcript``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.audio_encoder import build_audio_tower
from model.config import ModelConfig
from model.text_encoder import TextEncoder


def sparsemax(z: Tensor, dim: int = -1) -> Tensor:
    """Sparsemax (Martins & Astudillo 2016): Euclidean projection onto the simplex.

    Written with differentiable tensor ops, so autograd yields its exact Jacobian.
    """
    zs, _ = z.sort(dim=dim, descending=True)
    shape = [1] * z.dim()
    shape[dim] = -1
    rank = torch.arange(1, z.shape[dim] + 1, device=z.device, dtype=z.dtype).view(shape)
    cums = zs.cumsum(dim)
    k = (1 + rank * zs > cums).sum(dim=dim, keepdim=True)
    tau = (cums.gather(dim, k - 1) - 1) / k.to(z.dtype)
    return (z - tau).clamp_min(0)


class SharedCodebook(nn.Module):
    """Modality-shared codebook aggregation of frame / word features (MGA-CLAP)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.codes = nn.Parameter(torch.randn(size, dim) / math.sqrt(dim))

    def forward(self, feats: Tensor, mask: Tensor) -> Tensor:
        """``feats [B, N, E]``, ``mask [B, N]`` (True = valid) -> ``[B, E]`` (fp32)."""
        codes = self.codes.float()  # the loss side runs in fp32
        affinity = feats.float() @ codes.t() / math.sqrt(codes.shape[1])  # [B, N, K]
        affinity = affinity.masked_fill(~mask[..., None], float("-inf")).amax(dim=1)
        return sparsemax(affinity) @ codes


def pack_valid(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Valid tokens of each row moved to its front in their order, padding after: acoustic
    tokens padded to the batch's longest clip, then a transcript, read as one contiguous
    sequence (first-token pooling and absolute positions see what the audio-alone path sees)."""
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)
    return x.gather(1, order[..., None].expand_as(x)), mask.gather(1, order)


class ProjectionMLP(nn.Module):
    """LAION-CLAP's projection head (``ClapProjectionLayer``: Linear, ReLU, Linear)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(d_out, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.activation(self.linear1(x)))


def projection(kind: str, d_in: int, d_out: int) -> nn.Module:
    return ProjectionMLP(d_in, d_out) if kind == "mlp" else nn.Linear(d_in, d_out, bias=False)


class CLAP(nn.Module):
    def __init__(self, cfg: ModelConfig, n_mels: int) -> None:
        super().__init__()
        if cfg.init_temperature <= 0 or cfg.max_logit_scale <= 1:
            raise ValueError("init_temperature must be > 0 and max_logit_scale > 1")
        self.cfg = cfg
        self.audio = build_audio_tower(cfg.audio, n_mels)
        self.text = TextEncoder(cfg.text)
        audio_dim = int(self.audio.out_dim)
        self.calm_in: nn.Module | None = None
        if cfg.calm.enabled:  # audio frames -> the text LM's input space -> the LM
            self.calm_in = nn.Linear(audio_dim, self.text.out_dim)
        pooled_dim = self.text.out_dim if cfg.calm.enabled else audio_dim
        self.audio_proj = projection(cfg.projection, pooled_dim, cfg.embed_dim)
        if cfg.text.project:
            self.text_proj: nn.Module = projection(cfg.projection, self.text.out_dim, cfg.embed_dim)
        elif self.text.out_dim != cfg.embed_dim:
            raise ValueError(
                f"text.project=false needs embed_dim == text width "
                f"{self.text.out_dim}, got {cfg.embed_dim}"
            )
        else:
            self.text_proj = nn.Identity()
        # Shape [1], not 0-d: DeepSpeed's parameter broadcast views params as bytes, which a
        # 0-d tensor cannot do.
        self.log_scale = nn.Parameter(torch.full((1,), math.log(1.0 / cfg.init_temperature)))
        self.codebook: SharedCodebook | None = None
        if cfg.loss.codebook_size > 0:
            self.codebook = SharedCodebook(cfg.loss.codebook_size, cfg.embed_dim)
            self.frame_proj = nn.Linear(audio_dim, cfg.embed_dim)
            self.word_proj = nn.Linear(self.text.out_dim, cfg.embed_dim)
        # Locked parts (model.finetune.apply_locks) stay in eval mode: a plain list, so they
        # are not registered twice as submodules.
        self.frozen_modules: list[nn.Module] = []

    def train(self, mode: bool = True) -> CLAP:
        super().train(mode)
        for module in self.frozen_modules:
            module.eval()
        return self

    @property
    def uses_own_tokenizer(self) -> bool:
        """True when the text tower needs its own tokenizer (``text.kind: minilm | hf``)."""
        return self.text.uses_own_tokenizer

    def logit_scale(self) -> Tensor:
        # Clamp as open_clip: the temperature may not fall below 1 / max_logit_scale.
        scale = self.log_scale.float().clamp(max=math.log(self.cfg.max_logit_scale)).exp()
        return scale.squeeze(0)

    def _finish(
        self,
        pooled: Tensor,
        local: tuple[Tensor, Tensor] | None,
        key: str,
        out: dict[str, Tensor],
    ) -> None:
        emb = F.normalize(pooled.float(), dim=-1)
        if self.codebook is not None and local is not None:
            codes = self.codebook(*local)
            out[f"{key}_codes"] = codes
            emb = F.normalize(emb + F.normalize(codes, dim=-1), dim=-1)
        out[f"{key}_emb"] = emb

    def forward(
        self,
        mel: Tensor | None = None,
        mel_lengths: Tensor | None = None,
        ids: Tensor | None = None,
        mask: Tensor | None = None,
        tr_ids: Tensor | None = None,
        tr_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        fine = self.codebook is not None
        if tr_ids is not None and not self.cfg.calm.with_transcript:
            raise ValueError("tr_ids (a transcript) given but model.calm.with_transcript is off")
        if mel is not None and self.calm_in is not None:
            self._calm_audio(mel, mel_lengths, out, tr_ids, tr_mask)
        elif mel is not None:
            if fine:
                pooled, frames, fmask = self.audio(mel, mel_lengths, return_frames=True)
                self._finish(
                    self.audio_proj(pooled), (self.frame_proj(frames), fmask), "audio", out
                )
            else:
                self._finish(self.audio_proj(self.audio(mel, mel_lengths)), None, "audio", out)
        if ids is not None:
            if mask is None:
                raise ValueError("ids given without mask")
            if fine:
                pooled, words, wmask = self.text(ids, mask, return_tokens=True)
                self._finish(self.text_proj(pooled), (self.word_proj(words), wmask), "text", out)
            else:
                self._finish(self.text_proj(self.text(ids, mask)), None, "text", out)
        out["logit_scale"] = self.logit_scale()
        return out

    def _calm_audio(
        self,
        mel: Tensor,
        mel_lengths: Tensor | None,
        out: dict[str, Tensor],
        tr_ids: Tensor | None = None,
        tr_mask: Tensor | None = None,
    ) -> None:
        _, frames, valid = self.audio(mel, mel_lengths, return_frames=True)
        embeds, emask = self.calm_in(frames), valid
        if tr_ids is not None:
            if tr_mask is None or tr_ids.shape != tr_mask.shape or tr_ids.shape[0] != mel.shape[0]:
                raise ValueError("tr_ids needs a tr_mask of its shape, one row per clip")
            lm = self.text.impl
            embeds = torch.cat([embeds, lm.embed_tokens(tr_ids).to(embeds.dtype)], dim=1)
            embeds, emask = pack_valid(embeds, torch.cat([valid, tr_mask.bool()], dim=1))
        pooled, _, _ = self.text.impl.encode_embeds(embeds, emask)
        local = (self.frame_proj(frames), valid) if self.codebook is not None else None
        self._finish(self.audio_proj(pooled), local, "audio", out)

    def encode_audio(
        self,
        mel: Tensor,
        mel_lengths: Tensor | None = None,
        tr_ids: Tensor | None = None,
        tr_mask: Tensor | None = None,
    ) -> Tensor:
        """L2-normalized audio embeddings ``[B, embed_dim]`` (float32); ``tr_ids``/``tr_mask``:
        each clip's transcript (CALM with the transcript; an all-False row: none)."""
        out = self(mel=mel, mel_lengths=mel_lengths, tr_ids=tr_ids, tr_mask=tr_mask)
        return out["audio_emb"]

    def encode_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        """L2-normalized text embeddings ``[B, embed_dim]`` (float32)."""
        return self(ids=ids, mask=mask)["text_emb"]


def build_model(cfg: ModelConfig, n_mels: int) -> CLAP:
    return CLAP(cfg, n_mels)
