"""Feature presets: the exact input each pretrained audio tower of ``transformers`` expects.

``features.preset`` selects one (see ``FEATURE_PRESETS`` in ``dataprep.core.config`` for the
fields each one pins). Every featurizer maps a mono waveform at the preset's sample rate to
``[n_mels, frames]`` (the project's layout; the towers transpose where their model wants
``[frames, n_mels]``), with a fixed ``frames`` per preset, so a shard holds exactly what the
tower's own feature extractor would hand it:

- ``htsat`` — ``ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad")``, 48 kHz,
  10 s -> ``[64, 1001]`` power dB. Re-computed here with torch (float64) from the extractor's
  own Slaney filterbank because the extractor's numpy path costs 3-4x as much per clip
  (measured on bundled clips: 42-60 ms vs 15 ms per 10-s input, one thread). The two agree to
  7.6e-6 dB on bundled clips (tests/dataprep/test_feature_presets.py). A clip longer than 10 s
  is cut to its first 10 s: the extractor crops at a random offset, which a shard build must
  not do.
- ``whisper`` — ``WhisperFeatureExtractor`` called as is (it already runs on torch): 16 kHz,
  padded/truncated to 30 s -> ``[n_mels, 3000]`` (log10, clamp to max-8, (x+4)/4).
- ``ast`` — ``ASTFeatureExtractor`` called as is (torchaudio Kaldi fbank): 16 kHz, 128 bins,
  padded/truncated to 1024 frames, normalized with AudioSet mean/std -> ``[128, 1024]``.

``transformers`` is imported when a preset featurizer is built, never for the default log-mel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dataprep.core.config import FeatureConfig

# The algorithm ids that enter the fingerprint (bump the version when the numbers change).
ALGORITHMS = {
    "htsat": "transformers.ClapFeatureExtractor(rand_trunc,repeatpad,head-crop)/torch-f64/v1",
    "whisper": "transformers.WhisperFeatureExtractor/v1",
    "ast": "transformers.ASTFeatureExtractor/v1",
}


def _mono(wave: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"{name} expects a mono 1-D waveform, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} got an empty waveform")
    return x


class _Preset:
    """Common part: output dtype and the fixed frame count the tower expects."""

    preset: str
    frames: int

    def __init__(self, cfg: FeatureConfig) -> None:
        if cfg.preset != self.preset:
            raise ValueError(
                f"{type(self).__name__} needs features.preset={self.preset}, got {cfg.preset}"
            )
        self.cfg = cfg
        self._dtype = np.float16 if cfg.dtype == "float16" else np.float32

    def n_frames(self, n_samples: int) -> int:
        return self.frames

    def _out(self, mel: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(mel, dtype=np.float32).astype(self._dtype)


class HTSATFeatures(_Preset):
    """LAION-CLAP / ``ClapAudioModel`` input: ``[n_mels, 1001]`` dB (see module docstring)."""

    preset = "htsat"
    max_samples = 480_000  # 10 s at 48 kHz (ClapFeatureExtractor max_length_s=10)
    frames = max_samples // 480 + 1

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__(cfg)
        from transformers import ClapFeatureExtractor

        self.extractor = ClapFeatureExtractor(
            feature_size=cfg.n_mels,
            sampling_rate=cfg.sample_rate_hz,
            hop_length=cfg.hop_length,
            max_length_s=self.max_samples // cfg.sample_rate_hz,
            fft_window_size=cfg.n_fft,
            frequency_min=cfg.f_min_hz,
            frequency_max=cfg.f_max_hz,
            truncation="rand_trunc",
            padding="repeatpad",
        )
        self._filters = torch.from_numpy(self.extractor.mel_filters_slaney)  # [bins, mels] f64
        self._window = torch.hann_window(cfg.n_fft, periodic=True, dtype=torch.float64)

    def __call__(self, wave: np.ndarray | torch.Tensor) -> np.ndarray:
        x = _mono(wave, "HTSATFeatures")
        n = self.max_samples
        if x.shape[0] > n:
            x = x[:n]
        elif x.shape[0] < n:  # "repeatpad": whole repeats, then zeros
            x = np.tile(x, n // x.shape[0])
            x = np.pad(x, (0, n - x.shape[0]))
        spec = torch.stft(
            torch.from_numpy(x.astype(np.float64)),
            self.cfg.n_fft,
            self.cfg.hop_length,
            window=self._window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()  # [bins, frames]
        mel = self._filters.T @ power
        return self._out((10.0 * torch.log10(mel.clamp_min(1e-10))).numpy())


class WhisperFeatures(_Preset):
    """Whisper encoder input: ``[n_mels, 3000]`` (the extractor itself)."""

    preset = "whisper"
    frames = 3000

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__(cfg)
        from transformers import WhisperFeatureExtractor

        self.extractor = WhisperFeatureExtractor(
            feature_size=cfg.n_mels,
            sampling_rate=cfg.sample_rate_hz,
            hop_length=cfg.hop_length,
            n_fft=cfg.n_fft,
            chunk_length=30,
        )

    def __call__(self, wave: np.ndarray | torch.Tensor) -> np.ndarray:
        x = _mono(wave, "WhisperFeatures")
        out = self.extractor(x, sampling_rate=self.cfg.sample_rate_hz, return_tensors="np")
        return self._out(out["input_features"][0])


class ASTFeatures(_Preset):
    """Audio Spectrogram Transformer input: ``[n_mels, 1024]`` (the extractor itself)."""

    preset = "ast"
    frames = 1024

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__(cfg)
        from transformers import ASTFeatureExtractor

        self.extractor = ASTFeatureExtractor(
            sampling_rate=cfg.sample_rate_hz,
            num_mel_bins=cfg.n_mels,
            max_length=self.frames,
        )

    def __call__(self, wave: np.ndarray | torch.Tensor) -> np.ndarray:
        x = _mono(wave, "ASTFeatures")
        if x.shape[0] < self.cfg.win_length:
            # Kaldi framing yields no frame below one window; zero-pad so a very short clip
            # becomes one frame plus padding instead of an error.
            x = np.pad(x, (0, self.cfg.win_length - x.shape[0]))
        out = self.extractor(x, sampling_rate=self.cfg.sample_rate_hz, return_tensors="np")
        return self._out(out["input_values"][0].T)


PRESETS: dict[str, type[_Preset]] = {
    "htsat": HTSATFeatures,
    "whisper": WhisperFeatures,
    "ast": ASTFeatures,
}


def preset_featurizer(cfg: FeatureConfig) -> Any:
    return PRESETS[cfg.preset](cfg)
