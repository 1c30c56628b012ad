"""Audio tower: spectral patch transformer over log-mel (AST / CALM style).

Input ``mel [B, n_mels, T]`` (float, any dtype; cast to the weights' dtype) with optional
``mel_lengths [B]`` in frames (padding beyond a clip's length is masked out everywhere).

- Patches: ``patch_freq x patch_time`` (non-overlapping). ``patch_freq == n_mels`` gives CALM's
  linearized time patches ``[n_mels x k]``; the token order is time-major so that a token's
  time index is ``token // freq_patches``.
- Positions: learned (frequency table + time table, summed) or fixed 2-D sinusoidal (half of the
  channels code frequency, half code time).
- SpecAugment (training only): frequency and time masks drawn from the global torch RNG on the
  input's device, inside ``forward`` — so the gradient cache's RNG replay reproduces them.
- Pooling: ``cls`` / ``attentive`` / ``mean`` over valid tokens; optional CALM multirate pooling
  (``multirate=(r1, r2, ...)``): per-time-step features are average-pooled in windows of ``r``
  time patches and max-pooled over windows; the rate features are concatenated with the main
  pooled feature and projected back to ``dim``.
- ``band_window``: banded attention. The LAST block attends only within ``+-band_window`` time
  patches (the CLS token, when present, attends globally). A restriction of the main path, not
  MGA-CLAP's locality-aware block.
- ``locality_blocks = k``: MGA-CLAP's locality-aware block (Li et al. 2024). The frame features
  branch off the main path at the input of the last ``k`` blocks and run through those blocks'
  :meth:`~model.layers.Block.value_path` (each token its own projected value, no attention
  mixing, no feed-forward), then the shared final norm. The pooled clip feature is unchanged
  (main path); ``return_frames`` gives the value-path frames, which is what the MGA-CLAP codebook
  aggregates and what ``frame_similarity`` compares with text.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import AudioEncoderConfig, SpecAugmentConfig
from model.layers import AttentivePool, Block, masked_mean, sinusoid

log = logging.getLogger(__name__)


def spec_augment(mel: Tensor, lengths: Tensor, cfg: SpecAugmentConfig) -> Tensor:
    """Mask random frequency bands and time spans per sample (fill: the sample's mean).

    Draws from the global torch RNG (``torch.rand`` on ``mel.device``), so replaying the RNG
    state replays the masks exactly.
    """
    b, f, t = mel.shape
    dev = mel.device
    frames = torch.arange(t, device=dev)
    bins = torch.arange(f, device=dev)
    valid = frames[None, :] < lengths[:, None]  # [B, T]
    keep = torch.ones(b, f, t, dtype=torch.bool, device=dev)
    for _ in range(cfg.num_freq_masks):
        width = (torch.rand(b, device=dev) * (cfg.freq_mask + 1)).long().clamp(max=f)
        start = (torch.rand(b, device=dev) * (f - width + 1)).long()
        band = (bins[None, :] >= start[:, None]) & (bins[None, :] < (start + width)[:, None])
        keep &= ~band[:, :, None]
    for _ in range(cfg.num_time_masks):
        width = torch.minimum((torch.rand(b, device=dev) * (cfg.time_mask + 1)).long(), lengths)
        start = (torch.rand(b, device=dev) * (lengths - width + 1)).long()
        span = (frames[None, :] >= start[:, None]) & (frames[None, :] < (start + width)[:, None])
        keep &= ~span[:, None, :]
    fill = (mel * valid[:, None, :]).sum(dim=(1, 2)) / (valid.sum(dim=1) * f).clamp_min(1)
    return torch.where(keep, mel, fill[:, None, None].to(mel.dtype))


def build_audio_tower(cfg: AudioEncoderConfig, n_mels: int) -> nn.Module:
    """``cfg.kind``: ``patch`` (this module) or a transformers tower (``model.hf_audio``), whose
    mel bin count must be the feature config's and whose input length must fit ``max_frames``."""
    if cfg.kind == "patch":
        return AudioEncoder(cfg, n_mels)
    from model.hf_audio import build_hf_audio
    from model.hf_common import HFLoadError

    tower = build_hf_audio(cfg.kind, cfg.path, cfg.dropout)
    if tower.n_mels != n_mels:
        raise HFLoadError(
            f"{cfg.path}: the {cfg.kind} tower reads {tower.n_mels} mel bins, the "
            f"features have {n_mels} (features.preset={cfg.kind} gives the tower's)"
        )
    if cfg.max_frames < tower.frames:
        raise HFLoadError(
            f"audio.max_frames={cfg.max_frames} crops below the {cfg.kind} "
            f"tower's fixed input of {tower.frames} frames: set it >= {tower.frames}"
        )
    return tower


class AudioEncoder(nn.Module):
    """Patch transformer returning pooled features ``[B, dim]`` (see module docstring)."""

    def __init__(self, cfg: AudioEncoderConfig, n_mels: int) -> None:
        super().__init__()
        if cfg.patch_freq > n_mels:
            raise ValueError(f"patch_freq {cfg.patch_freq} > n_mels {n_mels}")
        if cfg.positions == "sinusoidal" and cfg.dim % 4:
            raise ValueError("sinusoidal 2-D positions need dim divisible by 4")
        self.cfg = cfg
        self.n_mels = n_mels
        self.out_dim = cfg.dim
        self.freq_patches = -(-n_mels // cfg.patch_freq)
        self.max_time_patches = -(-cfg.max_frames // cfg.patch_time)
        d = cfg.dim
        self.patch = nn.Conv2d(
            1,
            d,
            kernel_size=(cfg.patch_freq, cfg.patch_time),
            stride=(cfg.patch_freq, cfg.patch_time),
        )
        if cfg.positions == "learned":
            self.freq_pos = nn.Parameter(torch.zeros(self.freq_patches, d))
            self.time_pos = nn.Parameter(torch.zeros(self.max_time_patches, d))
            nn.init.trunc_normal_(self.freq_pos, std=0.02)
            nn.init.trunc_normal_(self.time_pos, std=0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, d)) if cfg.pooling == "cls" else None
        if self.cls is not None:
            nn.init.trunc_normal_(self.cls, std=0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(d, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(d)
        self.attn_pool = AttentivePool(d, cfg.heads) if cfg.pooling == "attentive" else None
        self.rate_proj = nn.Linear(d * (1 + len(cfg.multirate)), d) if cfg.multirate else None

    # -- pieces -------------------------------------------------------------------------------
    def _positions(self, tp: int, device: torch.device) -> Tensor:
        """Position table for a ``[tp time x freq_patches]`` grid, time-major ``[tp*F, dim]``."""
        fp, d = self.freq_patches, self.cfg.dim
        if self.cfg.positions == "learned":
            pos = self.time_pos[:tp, None, :] + self.freq_pos[None, :, :]
        else:
            half = d // 2
            pos = torch.cat(
                [
                    sinusoid(tp, half, device)[:, None, :].expand(tp, fp, half),
                    sinusoid(fp, half, device)[None, :, :].expand(tp, fp, half),
                ],
                dim=-1,
            )
        return pos.reshape(tp * fp, d)

    def _local_mask(self, tp: int, device: torch.device) -> Tensor:
        """``[N, N]`` bool: tokens attend within +-band_window time patches (CLS: global)."""
        t_idx = torch.arange(tp, device=device).repeat_interleave(self.freq_patches)
        allowed = (t_idx[:, None] - t_idx[None, :]).abs() <= self.cfg.band_window
        if self.cls is not None:
            n = allowed.shape[0] + 1
            full = torch.ones(n, n, dtype=torch.bool, device=device)
            full[1:, 1:] = allowed
            allowed = full
        return allowed

    def _multirate(self, tokens: Tensor, tmask: Tensor, tp: int) -> list[Tensor]:
        """CALM multirate pooling: average in windows of r time patches, max over windows."""
        b, _, d = tokens.shape
        frames = tokens.view(b, tp, self.freq_patches, d).mean(dim=2)  # [B, tp, D]
        fmask = tmask.view(b, tp, self.freq_patches)[:, :, 0]  # [B, tp]
        feats = []
        for r in self.cfg.multirate:
            pad = (-tp) % r
            x = F.pad(frames * fmask[..., None].to(frames.dtype), (0, 0, 0, pad))
            m = F.pad(fmask.to(frames.dtype), (0, pad))
            x = x.view(b, -1, r, d).sum(dim=2)
            cnt = m.view(b, -1, r).sum(dim=2)
            x = x / cnt.clamp_min(1.0)[..., None]
            x = x.masked_fill((cnt == 0)[..., None], torch.finfo(x.dtype).min)
            feats.append(x.max(dim=1).values)
        return feats

    # -- forward ------------------------------------------------------------------------------
    def forward(
        self, mel: Tensor, mel_lengths: Tensor | None = None, return_frames: bool = False
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """Pooled ``[B, dim]``; with ``return_frames`` also per-time-patch features
        ``[B, tp, dim]`` (mean over frequency patches) and their validity mask ``[B, tp]``."""
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"mel must be [B, {self.n_mels}, T], got {tuple(mel.shape)}")
        b, _, t = mel.shape
        if t > self.cfg.max_frames:
            # The loader crops to max_frames; anything longer is cut here rather than crashing
            # on the learned position table.
            mel = mel[:, :, : self.cfg.max_frames]
            t = self.cfg.max_frames
        lengths = (
            torch.full((b,), t, device=mel.device, dtype=torch.long)
            if mel_lengths is None
            else mel_lengths.to(mel.device).long().clamp(1, t)
        )
        mel = mel.to(self.patch.weight.dtype)
        if self.training and self.cfg.specaugment is not None:
            mel = spec_augment(mel, lengths, self.cfg.specaugment)
        # Zero the padding so a patch straddling a clip's end sees no padding content: the
        # output must not depend on how far (or with what) a batch was padded.
        frame_ok = torch.arange(t, device=mel.device)[None, :] < lengths[:, None]
        mel = mel * frame_ok[:, None, :].to(mel.dtype)
        pt, pf = self.cfg.patch_time, self.cfg.patch_freq
        mel = F.pad(mel, (0, (-t) % pt, 0, (-self.n_mels) % pf))
        tp = mel.shape[-1] // pt
        x = self.patch(mel.unsqueeze(1))  # [B, D, F', tp]
        x = x.permute(0, 3, 2, 1).reshape(b, tp * self.freq_patches, -1)  # time-major tokens
        x = x + self._positions(tp, x.device).to(x.dtype)
        # A time patch is valid when its first frame lies inside the clip.
        tvalid = torch.arange(tp, device=x.device)[None, :] * pt < lengths[:, None]
        tmask = tvalid.repeat_interleave(self.freq_patches, dim=1)  # [B, N]
        kmask = tmask
        if self.cls is not None:
            x = torch.cat([self.cls.expand(b, -1, -1).to(x.dtype), x], dim=1)
            kmask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), tmask], 1)
        x = self.drop(x)
        band = self._local_mask(tp, x.device) if self.cfg.band_window is not None else None
        # the frame path starts at block ``branch`` (only computed when frames are asked for)
        branch = len(self.blocks) - self.cfg.locality_blocks if return_frames else len(self.blocks)
        v = None
        for i, block in enumerate(self.blocks):
            if i >= branch:
                v = block.value_path(x if v is None else v)
            x = block(x, kmask, band if i == len(self.blocks) - 1 else None)
        x = self.norm(x)
        tokens = x[:, 1:] if self.cls is not None else x
        if self.cls is not None:
            pooled = x[:, 0]
        elif self.attn_pool is not None:
            pooled = self.attn_pool(tokens, tmask)
        else:
            pooled = masked_mean(tokens, tmask)
        if self.rate_proj is not None:
            pooled = self.rate_proj(torch.cat([pooled, *self._multirate(tokens, tmask, tp)], -1))
        if not return_frames:
            return pooled
        if v is not None:  # the locality-aware frame path
            v = self.norm(v)
            tokens = v[:, 1:] if self.cls is not None else v
        frames = tokens.view(b, tp, self.freq_patches, -1).mean(dim=2)
        return pooled, frames, tvalid
