"""The towers and the gradient cache on real log-mels from the bundled corpora."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from model_helpers import tiny_config

from dataprep.core.config import FeatureConfig
from dataprep.core.features import LogMel
from model.clap import build_model
from model.gradcache import BATCH_KEYS, cached_step
from model.losses import ContrastiveLoss


def real_mels(corpora_root: Path, n: int, max_s: float = 2.5) -> list[torch.Tensor]:
    feats = FeatureConfig()
    logmel = LogMel(feats)
    clips = sorted((corpora_root / "esc50_mini").rglob("*.wav"))[:n]
    clips += sorted((corpora_root / "nemo_manifest_mini").rglob("*.wav"))[: n - len(clips)]
    mels = []
    for i, path in enumerate(clips):
        wave, sr = sf.read(path, dtype="float32", always_2d=True)
        wave = torch.from_numpy(wave.mean(axis=1))
        if sr != feats.sample_rate_hz:
            wave = torchaudio.functional.resample(wave, sr, feats.sample_rate_hz)
        # Different lengths per clip, so the batch really is padded.
        keep = int(feats.sample_rate_hz * max_s * (1.0 - 0.2 * (i % 4)))
        mels.append(torch.from_numpy(logmel(wave[:keep].numpy()).astype(np.float32)))
    return mels


def padded_batch(mels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    n, t = len(mels), max(m.shape[1] for m in mels)
    mel = torch.zeros(n, mels[0].shape[0], t)
    for i, m in enumerate(mels):
        mel[i, :, : m.shape[1]] = m
    g = torch.Generator().manual_seed(0)
    return {
        "mel": mel,
        "mel_lengths": torch.tensor([m.shape[1] for m in mels]),
        "ids": torch.randint(0, 100, (n, 10), generator=g),
        "mask": torch.ones(n, 10, dtype=torch.long),
        "groups": torch.arange(n),
    }


def test_real_clips_batched_equal_alone_and_cached_step_is_exact(corpora_root):
    n_mels = FeatureConfig().n_mels  # from the fingerprinted feature config, never restated
    mels = real_mels(corpora_root, 5)
    batch = padded_batch(mels)
    assert len(set(batch["mel_lengths"].tolist())) > 1
    torch.manual_seed(0)
    cfg = tiny_config(max_frames=256, patch_freq=16, patch_time=8)
    model = build_model(cfg, n_mels).eval()
    with torch.no_grad():
        together = model.encode_audio(batch["mel"], batch["mel_lengths"])
        alone = torch.cat([model.encode_audio(m[None]) for m in mels])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(together).all()

    model.train()
    loss_fn = ContrastiveLoss(cfg.loss)

    def grads(fn):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        fn()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    def full():
        outs = [model(**{k: batch[k][i : i + 2] for k in BATCH_KEYS}) for i in (0, 2, 4)]
        o = {k: torch.cat([x[k] for x in outs]) for k in outs[0] if outs[0][k].dim() > 0}
        loss_fn(**o, logit_scale=outs[0]["logit_scale"], groups=batch["groups"])["loss"].backward()

    ref, got = grads(full), grads(lambda: cached_step(model, batch, loss_fn, 2))
    assert max((ref[k] - got[k]).abs().max().item() for k in ref) < 1e-5
