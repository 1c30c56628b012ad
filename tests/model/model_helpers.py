"""Tiny model configs and synthetic batches shared by the model tests (CPU-sized)."""

from __future__ import annotations

import torch

from model.config import (
    AudioEncoderConfig,
    LossConfig,
    ModelConfig,
    SpecAugmentConfig,
    TextEncoderConfig,
)

N_MELS = 16


def tiny_config(**audio_overrides) -> ModelConfig:
    audio = {
        "dim": 32,
        "depth": 2,
        "heads": 2,
        "patch_freq": 8,
        "patch_time": 4,
        "max_frames": 64,
        "dropout": 0.1,
        "pooling": "attentive",
        "multirate": (2, 4),
        "band_window": 2,
        "specaugment": SpecAugmentConfig(freq_mask=4, time_mask=8),
    }
    audio.update(audio_overrides)
    return ModelConfig(
        audio=AudioEncoderConfig(**audio),
        text=TextEncoderConfig(vocab_size=100, dim=32, depth=2, heads=2, max_len=16, dropout=0.1),
        embed_dim=16,
        loss=LossConfig(kind="mga", hard_negative_beta=0.5, label_smoothing=0.1, codebook_size=8),
    )


def make_batch(n: int, seed: int = 1, frames: int = 60) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, 12, dtype=torch.long)
    lens = torch.randint(6, 13, (n,), generator=g)
    mask[torch.arange(12)[None, :] >= lens[:, None]] = 0
    groups = torch.arange(n)
    groups[1] = groups[0]  # two captions of one clip: not negatives of each other
    return {
        "mel": torch.randn(n, N_MELS, frames, generator=g),
        "mel_lengths": torch.randint(frames // 3, frames + 1, (n,), generator=g),
        "ids": torch.randint(0, 100, (n, 12), generator=g),
        "mask": mask,
        "groups": groups,
    }
