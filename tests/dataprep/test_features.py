"""Our torchaudio log-mel against librosa's on real clips, and the feature fingerprint."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile as sf

from dataprep.core.config import FeatureConfig
from dataprep.core.features import (
    FingerprintMismatch,
    LogMel,
    check_fingerprint,
    feature_fingerprint,
    fingerprint_diff,
    fingerprint_fields,
)

CLIPS = [
    "esc50_mini/audio",  # fluidsynth renderings, 16/22.05/44.1 kHz wav
    "librispeech_mini/LibriSpeech",  # speech, flac
]


def _real_clips(root, n=4):
    files = []
    for sub in CLIPS:
        files += sorted(p for p in (root / sub).rglob("*") if p.suffix in {".wav", ".flac"})[:n]
    assert files, "no real clips found in the bundled corpora"
    return files


@pytest.mark.parametrize("mel_scale", ["htk", "slaney"])
def test_logmel_matches_librosa_on_real_clips(corpora_root, mel_scale):
    """Tolerance: |log-mel difference| <= 1e-3 nats (median) and <= 0.02 (99.9th pct) over all
    bins with power above 1e-8 (below that both are dominated by float rounding)."""
    cfg = FeatureConfig(mel_scale=mel_scale, dtype="float32", n_mels=64)
    ours = LogMel(cfg)
    for path in _real_clips(corpora_root):
        wave, sr = sf.read(path, dtype="float32", always_2d=True)
        wave = (
            librosa.resample(wave.mean(axis=1), orig_sr=sr, target_sr=16000)
            if sr != 16000
            else wave.mean(axis=1)
        )
        ref = librosa.feature.melspectrogram(
            y=wave,
            sr=16000,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            n_mels=cfg.n_mels,
            fmin=cfg.f_min_hz,
            fmax=cfg.f_max_hz,
            htk=mel_scale == "htk",
            norm="slaney" if mel_scale == "slaney" else None,
            center=True,
            pad_mode="reflect",
            power=2.0,
        )
        got = ours(wave)
        assert got.shape == ref.shape, (path.name, got.shape, ref.shape)
        mask = ref > 1e-8
        diff = np.abs(got - np.log(ref + cfg.log_offset))[mask]
        assert np.median(diff) <= 1e-3, (path.name, float(np.median(diff)))
        assert np.quantile(diff, 0.999) <= 0.02, (path.name, float(np.quantile(diff, 0.999)))


def test_short_input_does_not_crash_and_frame_count():
    cfg = FeatureConfig()
    lm = LogMel(cfg)
    assert lm(np.zeros(50, np.float32)).shape == (cfg.n_mels, 1)
    assert lm(np.ones(16000, np.float32) * 0.1).shape == (cfg.n_mels, 101)
    assert lm(np.zeros(100, np.float32)).dtype == np.float16


def test_fingerprint_changes_with_any_feature_field_and_names_it():
    a, b = FeatureConfig(), FeatureConfig(n_mels=128)
    assert feature_fingerprint(a) == feature_fingerprint(FeatureConfig())
    assert feature_fingerprint(a) != feature_fingerprint(b)
    diff = fingerprint_diff(fingerprint_fields(a), fingerprint_fields(b))
    assert diff == ["n_mels: 64 != 128"]
    assert feature_fingerprint(FeatureConfig(hop_length=320)) != feature_fingerprint(a)


def test_check_fingerprint_is_the_one_refusal_and_names_fields():
    model, data = FeatureConfig(), FeatureConfig(n_mels=80, f_max_hz=7000.0)
    fp = feature_fingerprint(model)
    assert check_fingerprint(model, fp, where="x") == fp
    assert check_fingerprint(model, None, where="x") == fp  # nothing recorded: caller decides
    with pytest.raises(FingerprintMismatch) as err:
        check_fingerprint(
            model, feature_fingerprint(data), where="build.json", fields=fingerprint_fields(data)
        )
    msg = str(err.value)
    assert "build.json" in msg and "n_mels: 64 != 80" in msg and "f_max_hz: 8000.0 != 7000.0" in msg
    # a bare FeatureConfig dump (no versions, no algorithm) still names the field
    with pytest.raises(FingerprintMismatch, match="n_mels: 64 != 80"):
        check_fingerprint(model, "0" * 16, where="old", fields=data.model_dump(mode="json"))
    with pytest.raises(FingerprintMismatch, match="fields are unknown"):
        check_fingerprint(model, "0" * 16, where="sample k")


@pytest.mark.parametrize("mel_scale", ["htk", "slaney"])
@pytest.mark.parametrize("n", [50, 401, 16000, 48007])
def test_logmel_equals_torchaudio_melspectrogram(mel_scale, n):
    """LogMel computes torchaudio's MelSpectrogram (same filterbank and STFT) in fewer passes;
    the numbers agree to float rounding, so the algorithm id and fingerprint stay."""
    import torch
    import torchaudio

    cfg = FeatureConfig(mel_scale=mel_scale, dtype="float32", win_length=320)
    ref_mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate_hz, n_fft=cfg.n_fft, win_length=cfg.win_length,
        hop_length=cfg.hop_length, f_min=cfg.f_min_hz, f_max=cfg.f_max_hz, n_mels=cfg.n_mels,
        power=2.0, center=True, pad_mode="reflect",
        norm="slaney" if mel_scale == "slaney" else None, mel_scale=mel_scale,
    )  # fmt: skip
    wave = (np.random.default_rng(n).standard_normal(n) * 0.1).astype(np.float32)
    x = torch.from_numpy(wave)
    if n < cfg.n_fft // 2 + 1:
        x = torch.nn.functional.pad(x, (0, cfg.n_fft // 2 + 1 - n))
    with torch.no_grad():
        ref = ref_mel(x)[:, : 1 + n // cfg.hop_length].numpy()
    got = LogMel(cfg).power(wave)
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-9)
    np.testing.assert_allclose(
        LogMel(cfg)(wave), np.log(ref + cfg.log_offset), rtol=1e-5, atol=1e-5
    )
