"""Audio towers from ``transformers``: HTSAT (``ClapAudioModel``), the Whisper encoder, AST.

Each tower declares the input it needs — ``preset`` (the ``features.preset`` whose shards it
reads, see ``dataprep.core.feature_presets``), ``n_mels`` and ``frames`` — and
:func:`check_features` refuses any other feature config, naming both sides. The input is the
project's layout ``mel [B, n_mels, frames]``; each tower transposes to what its model wants.

Contract of :class:`model.audio_encoder.AudioEncoder`: ``forward(mel, mel_lengths=None,
return_frames=False)`` -> pooled ``[B, out_dim]`` or ``(pooled, frames [B, t, out_dim],
valid [B, t])``. The presets pad/repeat every clip to a fixed length, which the models see
whole (that is what they were trained on), so ``mel_lengths`` only marks which output frames
lie in the clip for the Whisper encoder (1 output frame per 2 input frames).

- ``htsat`` — pooled: ``ClapAudioModel``'s ``pooler_output`` (what LAION-CLAP's audio
  projection reads); frames: the last feature map averaged over frequency. Its input
  BatchNorm stays in eval mode (running statistics) while training: batch statistics would
  make a sample's embedding depend on its chunk, which breaks the gradient cache's exactness,
  and the pretrained statistics are what fine-tuning starts from.
- ``whisper`` — the encoder of a ``WhisperModel`` directory (the decoder is dropped); pooled:
  mean over the valid output frames.
- ``ast`` — ``ASTModel``; pooled: its ``pooler_output`` (mean of CLS and distillation tokens);
  frames: patch tokens averaged over frequency patches.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from model.hf_common import DROPOUT_KEYS, HFLoadError, load_hf_config, load_hf_model

KINDS = ("htsat", "whisper", "ast")


def _clap_audio(path: str | os.PathLike[str], config: Any, dropout: float | None) -> nn.Module:
    from transformers import ClapAudioModel, ClapModel

    if config.model_type == "clap":  # a whole ClapModel directory: keep its audio tower
        if dropout is not None:
            for key in DROPOUT_KEYS:
                if hasattr(config.audio_config, key):
                    setattr(config.audio_config, key, dropout)
        return load_hf_model(path, config, None, ClapModel, part="audio_model.").audio_model
    if config.model_type != "clap_audio_model":
        raise HFLoadError(
            f"{path}: audio.kind=htsat needs a ClapModel or ClapAudioModel "
            f"directory, found model_type {config.model_type!r}"
        )
    return load_hf_model(path, config, dropout, ClapAudioModel)


# audio.kind -> (the config's model_type, how a message names it)
_TYPED = {"whisper": ("whisper", "a Whisper"), "ast": ("audio-spectrogram-transformer", "an AST")}


def _typed_model(
    path: str | os.PathLike[str] | None, kind: str, dropout: float | None
) -> nn.Module:
    """The transformers model under ``path``, refused unless its config is ``kind``'s type."""
    model_type, what = _TYPED[kind]
    config = load_hf_config(path)
    if config.model_type != model_type:
        raise HFLoadError(
            f"{path}: audio.kind={kind} needs {what} model directory, "
            f"found model_type {config.model_type!r}"
        )
    return load_hf_model(path, config, dropout)


class _HFAudio(nn.Module):
    preset: str
    frames: int
    n_mels: int
    out_dim: int

    def _check(self, mel: Tensor) -> Tensor:
        if mel.dim() != 3 or mel.shape[1] != self.n_mels or mel.shape[2] < self.frames:
            raise ValueError(
                f"{type(self).__name__} needs mel [B, {self.n_mels}, {self.frames}] "
                f"(features.preset={self.preset}), got {tuple(mel.shape)}"
            )
        # A loader may pad a batch beyond the preset's length; the preset already padded.
        return mel[:, :, : self.frames]

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


class HTSATAudio(_HFAudio):
    preset = "htsat"
    frames = 1001

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        dropout: float | None = None,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        config = model.config if model is not None else load_hf_config(path)
        if model is None:
            model = _clap_audio(path, config, dropout)
        self.model = model
        cfg = model.config
        if cfg.enable_fusion:
            raise HFLoadError(
                f"{path}: fused HTSAT (enable_fusion=true) needs 4-channel "
                f"'fusion' input; only unfused checkpoints are supported"
            )
        self.n_mels = int(cfg.num_mel_bins)
        self.out_dim = int(cfg.hidden_size)

    def train(self, mode: bool = True) -> HTSATAudio:
        super().train(mode)
        self.model.audio_encoder.batch_norm.eval()  # see module docstring
        return self

    def forward(
        self, mel: Tensor, mel_lengths: Tensor | None = None, return_frames: bool = False
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        x = self._check(mel).to(self._dtype()).transpose(1, 2).unsqueeze(1)  # [B, 1, T, F]
        out = self.model(input_features=x)
        if not return_frames:
            return out.pooler_output
        frames = out.last_hidden_state.mean(dim=2).transpose(1, 2)  # [B, t, C]
        valid = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
        return out.pooler_output, frames, valid


class WhisperAudio(_HFAudio):
    preset = "whisper"

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        dropout: float | None = None,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if model is None:
            model = _typed_model(path, "whisper", dropout).get_encoder()  # no decoder
        self.model = model
        cfg = model.config
        self.n_mels = int(cfg.num_mel_bins)
        self.frames = int(cfg.max_source_positions) * 2  # two stride-1/stride-2 convs
        self.out_dim = int(cfg.d_model)

    def forward(
        self, mel: Tensor, mel_lengths: Tensor | None = None, return_frames: bool = False
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        x = self._check(mel).to(self._dtype())
        frames = self.model(input_features=x).last_hidden_state  # [B, frames / 2, D]
        t = frames.shape[1]
        if mel_lengths is None:
            valid = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
        else:
            out_len = (mel_lengths.to(frames.device).long().clamp(1, self.frames) + 1) // 2
            valid = torch.arange(t, device=frames.device)[None, :] < out_len[:, None]
        w = valid.to(frames.dtype)[..., None]
        pooled = (frames * w).sum(1) / w.sum(1).clamp_min(1.0)
        return (pooled, frames, valid) if return_frames else pooled


class ASTAudio(_HFAudio):
    preset = "ast"

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        dropout: float | None = None,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if model is None:
            model = _typed_model(path, "ast", dropout)
        self.model = model
        cfg = model.config
        self.n_mels = int(cfg.num_mel_bins)
        self.frames = int(cfg.max_length)
        self.grid = model.embeddings.get_shape(cfg)  # (freq patches, time patches)
        self.out_dim = int(cfg.hidden_size)

    def forward(
        self, mel: Tensor, mel_lengths: Tensor | None = None, return_frames: bool = False
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        x = self._check(mel).to(self._dtype()).transpose(1, 2)  # [B, T, F]
        out = self.model(input_values=x)
        if not return_frames:
            return out.pooler_output
        f, t = self.grid
        patches = out.last_hidden_state[:, 2:]  # after CLS and distillation tokens
        frames = patches.reshape(x.shape[0], f, t, -1).mean(dim=1)
        valid = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
        return out.pooler_output, frames, valid


TOWERS: dict[str, type[_HFAudio]] = {"htsat": HTSATAudio, "whisper": WhisperAudio, "ast": ASTAudio}


def build_hf_audio(
    kind: str, path: str | os.PathLike[str], dropout: float | None = None
) -> _HFAudio:
    if kind not in TOWERS:
        raise HFLoadError(f"audio.kind={kind!r} is not one of {tuple(TOWERS)}")
    return TOWERS[kind](path, dropout)


def check_features(tower: _HFAudio, features: Any) -> None:
    """Refuse a feature config (``FeatureConfig``) that is not the tower's input."""
    want = {"preset": tower.preset, "n_mels": tower.n_mels}
    got = {"preset": features.preset, "n_mels": features.n_mels}
    if want != got:
        diff = ", ".join(
            f"{k}: tower needs {want[k]!r}, features have {got[k]!r}"
            for k in want
            if want[k] != got[k]
        )
        raise HFLoadError(f"{type(tower).__name__} does not read these features ({diff})")
