"""Audio views (audiomentations + own noise/MP3 steps) on real clips of the bundled corpora."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dataprep.augment import AudioAugmenter
from dataprep.augment.audio import TRANSFORMS, load_noise_pool
from dataprep.core.config import AugmentConfig

SR = 16000


def _load(path: Path) -> np.ndarray:
    wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    mono = wave.mean(axis=1)
    if sr != SR:
        import librosa

        mono = librosa.resample(mono, orig_sr=sr, target_sr=SR).astype(np.float32)
    return mono


@pytest.fixture(scope="module")
def clips(corpora_root: Path) -> dict[str, np.ndarray]:
    files = sorted((corpora_root / "esc50_mini" / "audio").glob("*.wav"))
    dogs = [f for f in files if f.stem.endswith("-0")][:2]  # ESC-50 target 0: dog
    speech = sorted((corpora_root / "cremad_mini" / "AudioWAV").glob("*.wav"))[:2]
    return {f.stem: _load(f) for f in dogs + speech}


@pytest.fixture(scope="module")
def rain_files(corpora_root: Path) -> list[str]:
    # Background noise for the "noise" step: other clips of a corpus (ESC-50 target 10: rain).
    return [str(f) for f in sorted((corpora_root / "esc50_mini" / "audio").glob("*-10.wav"))]


def test_views_deterministic_recorded_and_bounded(
    clips: dict[str, np.ndarray], rain_files: list[str]
) -> None:
    cfg = AugmentConfig(audio_views=3, audio_chain_len=2, noise_dirs=tuple(rain_files), seed=5)
    aug = AudioAugmenter(cfg, SR)
    assert set(aug.names) == set(cfg.audio_transforms)  # noise enabled: the pool loaded real clips
    again = AudioAugmenter(cfg, SR)
    py_state, np_state = random.getstate(), np.random.get_state()
    seen: set[str] = set()
    for key, wave in clips.items():
        views = aug.views(wave, key)
        assert len(views) == 3
        for (w, chain), (w2, chain2) in zip(views, again.views(wave, key)):
            assert np.array_equal(w, w2) and chain == chain2
            assert w.dtype == np.float32 and w.shape == wave.shape
            assert np.isfinite(w).all() and np.abs(w).max() <= 0.99 + 1e-6
            assert not np.allclose(w, wave, atol=1e-4)  # a view is a different signal
            names = [step["transform"] for step in chain if step["transform"] != "peak_limit"]
            assert len(names) == 2 and set(names) <= set(cfg.audio_transforms)
            seen.update(names)
    # The global RNG streams of the caller are left as they were.
    assert random.getstate() == py_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state()[1:2], np_state[1:2]))
    other = AudioAugmenter(cfg.model_copy(update={"seed": 6}), SR)
    key, wave = next(iter(clips.items()))
    assert [c for _, c in other.views(wave, key)] != [c for _, c in aug.views(wave, key)]
    assert seen  # transforms that ran


@pytest.mark.parametrize("name", TRANSFORMS)
def test_each_transform_runs_and_records_parameters(
    name: str, clips: dict[str, np.ndarray], rain_files: list[str]
) -> None:
    cfg = AugmentConfig(
        audio_views=1, audio_chain_len=1, audio_transforms=(name,), noise_dirs=tuple(rain_files)
    )
    aug = AudioAugmenter(cfg, SR)
    key, wave = next(iter(clips.items()))
    ((w, chain),) = aug.views(wave, key)
    assert chain[0]["transform"] == name and len(chain[0]) > 1  # parameters stored
    assert w.shape == wave.shape and not np.allclose(w, wave, atol=1e-4)


def test_noise_without_pool_is_disabled_not_white_noise(clips: dict[str, np.ndarray]) -> None:
    cfg = AugmentConfig(audio_views=2, audio_transforms=("noise",))
    aug = AudioAugmenter(cfg, SR)
    key, wave = next(iter(clips.items()))
    assert aug.views(wave, key) == []


def test_noise_pool_skips_broken_files(corpora_root: Path) -> None:
    bad = corpora_root / "bad_inputs"
    pool = load_noise_pool(
        (str(bad / "truncated.wav"), str(bad / "not_audio.wav"), str(bad / "silent.wav")), SR
    )
    assert pool == [] or all(np.isfinite(p).all() for p in pool)


def test_unknown_transform_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown audio transforms"):
        AudioAugmenter(AugmentConfig(audio_views=1, audio_transforms=("reverb9000",)), SR)


def test_band_pass_passes_its_band_and_cuts_outside() -> None:
    """The band-pass step, measured on white noise: ~0 dB in the middle of the band, ~-3 dB
    at the recorded band's edges, > 5 dB more an octave outside them and, two octaves out,
    at least the rolloff (6 dB per octave per section, reached further out)."""
    from scipy.signal import welch

    noise = (np.random.default_rng(0).standard_normal(8 * SR) * 0.1).astype(np.float32)
    aug = AudioAugmenter(AugmentConfig(audio_views=1, audio_transforms=("band_pass",)), SR)
    orders = set()
    for seed in range(12):
        out, p = aug._apply("band_pass", noise, seed)
        f, pxx = welch(noise, SR, nperseg=4096)
        _, pyy = welch(out, SR, nperseg=4096)
        gain_db = 10 * np.log10(pyy / pxx)

        def at(hz: float) -> float:
            return float(np.interp(hz, f, gain_db))

        centre, half, rolloff = p["center_freq"], p["bandwidth"] / 2, p["rolloff"]
        lo, hi = max(centre - half, 1.0), centre + half  # the band audiomentations cuts
        orders.add(rolloff)
        peak = np.arctan(np.sqrt(np.tan(np.pi * lo / SR) * np.tan(np.pi * hi / SR))) * SR / np.pi
        assert abs(at(peak)) < 1.0, (seed, p, at(peak))
        assert abs(at(lo) + 3) < 2.0 and abs(at(hi) + 3) < 2.0, (seed, p, at(lo), at(hi))
        # An octave out, at least 5 dB under the edges' -3 (the skirts steepen towards their
        # 6 dB/octave per section further out: two octaves out, most of it).
        for out_hz, far_hz in ((hi * 2, hi * 4), (lo / 2, lo / 4)):
            if 20 < out_hz < 0.95 * SR / 2:
                assert at(out_hz) < -8.0, (seed, p, out_hz, at(out_hz))
            if 20 < far_hz < 0.95 * SR / 2:
                assert at(far_hz) < -3 - rolloff, (seed, p, far_hz, at(far_hz))
    assert orders == {12, 18, 24}


def test_room_convolution_equals_scipy(clips: dict[str, np.ndarray]) -> None:
    """The batched overlap-add the ``room`` step runs equals scipy's full convolution, cut to
    the clip, for every room of the bank and clip lengths around the block size (shorter than
    one block, an exact multiple, one sample over, a real clip)."""
    from scipy.signal import fftconvolve

    from dataprep.augment.audio import N_ROOMS, _rir_spectrum, reverberate, room_bank

    bank = room_bank(0, SR)
    real = next(iter(clips.values()))
    rng = np.random.default_rng(0)
    rir0 = bank[0][0]
    step = 4096 - len(rir0) + 1
    for n in (1, 100, step, 2 * step, 2 * step + 1):
        wave = rng.standard_normal(n).astype(np.float32) * 0.1
        ref = fftconvolve(wave.astype(np.float64), rir0.astype(np.float64))[:n]
        got = reverberate(wave, rir0, _rir_spectrum(0, SR, 0))
        assert got.dtype == np.float32 and got.shape == (n,)
        np.testing.assert_allclose(got, ref, atol=2e-6 * np.abs(ref).max() + 1e-9)
    for idx in range(N_ROOMS):
        rir = bank[idx][0]
        ref = fftconvolve(real.astype(np.float64), rir.astype(np.float64))[: len(real)]
        got = reverberate(real, rir, _rir_spectrum(0, SR, idx))
        np.testing.assert_allclose(got, ref, atol=2e-6 * np.abs(ref).max())
    with pytest.raises(ValueError, match="too long"):
        reverberate(real, np.ones(3000, np.float32), _rir_spectrum(0, SR, 0))
