"""Log-mel features, the preset featurizers' entry point and the feature fingerprint.

The fingerprint is a sha256 over the feature config and the algorithm id; the torch/torchaudio
versions are recorded next to it (see ``VERSION_FIELDS``). :func:`check_fingerprint` is the one
check: loader, evaluator and inference refuse features whose fingerprint differs from the model's
feature config with :class:`FingerprintMismatch`, naming the differing fields.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torchaudio

from dataprep.core.config import FeatureConfig
from dataprep.core.feature_presets import ALGORITHMS, preset_featurizer


def fingerprint_fields(cfg: FeatureConfig) -> dict[str, Any]:
    """Everything that changes the feature numbers: config + torch/torchaudio versions."""
    fields = cfg.model_dump(mode="json")
    # The removed ``multirate_hops`` (always empty in practice) stays in the hash as its old
    # default, so every existing shard set keeps its fingerprint and new builds stay byte-identical.
    fields["multirate_hops"] = []
    fields["torch"] = torch.__version__.split("+")[0]
    fields["torchaudio"] = torchaudio.__version__.split("+")[0]
    if cfg.preset == "logmel":
        # The default keeps the fields (and so the fingerprint) it had before presets existed.
        del fields["preset"]
        fields["algorithm"] = "torchaudio.MelSpectrogram/power2/log(x+offset)/v1"
    else:
        import transformers

        fields["transformers"] = transformers.__version__
        fields["algorithm"] = ALGORITHMS[cfg.preset]
    return fields


# Recorded beside the fingerprint (build.json ``feature_fields``) but not hashed: a GPU node runs
# a different torch build than the CPU pipeline workers, and the log-mel numbers agree to float
# rounding across these versions; refusing such shards would make them unusable fleet-wide.
VERSION_FIELDS = ("torch", "torchaudio", "transformers")


def feature_fingerprint(cfg: FeatureConfig) -> str:
    """sha256 (16 hex) over the feature config and the algorithm id."""
    fields = {k: v for k, v in fingerprint_fields(cfg).items() if k not in VERSION_FIELDS}
    blob = json.dumps(fields, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def fingerprint_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Human-readable list of fields that differ between two fingerprint field dicts."""
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


class FingerprintMismatch(ValueError):
    """Data featurized with other settings than the model's feature config."""


def check_fingerprint(
    features: FeatureConfig,
    found: str | None,
    *,
    where: str,
    fields: Mapping[str, Any] | None = None,
    expected: str | None = None,
) -> str:
    """Refuse ``found`` (a recorded fingerprint) unless it is ``features``' fingerprint.

    ``where`` names the record (``build.json``, a sample key, a cache file); ``fields`` are the
    feature fields recorded with it (build.json ``feature_fields``, possibly a bare
    ``FeatureConfig`` dump without versions), so the message can name what differs; ``expected``
    skips recomputing the fingerprint on hot paths. Returns the expected fingerprint; a missing
    ``found`` passes (nothing to compare: the caller decides whether to warn).
    """
    expected = expected or feature_fingerprint(features)
    if not found or found == expected:
        return expected
    if fields is not None:
        want = fingerprint_fields(features)
        hashed = [k for k in want if k in fields and k not in VERSION_FIELDS]
        diff = fingerprint_diff({k: want[k] for k in hashed}, {k: fields[k] for k in hashed})
        why = "; ".join(diff) if diff else "same fields, different versions/algorithm"
    else:
        why = "the differing fields are unknown: no feature fields recorded there"
    raise FingerprintMismatch(
        f"feature fingerprint mismatch: {where} has {found}, the model's features give {expected} "
        f"({why}; left = model, right = data). Rebuild the data with the model's features or "
        f"use the features it was built with."
    )


class LogMel:
    """Mono waveform at ``cfg.sample_rate_hz`` -> log-mel ``[n_mels, frames]``.

    Frames: ``1 + len // hop`` (centered STFT, reflect padding), so any clip at least one
    sample long works; inputs shorter than ``n_fft // 2 + 1`` are zero-padded first because
    reflect padding needs that many samples.
    """

    def __init__(self, cfg: FeatureConfig, hop_length: int | None = None) -> None:
        self.cfg = cfg
        self.hop_length = hop_length or cfg.hop_length
        # torchaudio's MelSpectrogram numbers in fewer passes: its filterbank and its STFT call,
        # then |X|^2 as re^2 + im^2 of the STFT's contiguous [frames, freq, 2] view (torchaudio
        # takes abs(), a square root, then pow(2), over the strided complex tensor). Equal to
        # MelSpectrogram to float rounding (tested), ~1.5x less CPU per clip (bench/RESULTS.md),
        # so the algorithm id and the fingerprint stay.
        self._window = torch.hann_window(cfg.win_length)
        fb = torchaudio.functional.melscale_fbanks(
            n_freqs=cfg.n_fft // 2 + 1,
            f_min=cfg.f_min_hz,
            f_max=cfg.f_max_hz,
            n_mels=cfg.n_mels,
            sample_rate=cfg.sample_rate_hz,
            norm="slaney" if cfg.mel_scale == "slaney" else None,
            mel_scale=cfg.mel_scale,
        )  # [freq, n_mels]
        self._fb_t = fb.T.contiguous()  # [n_mels, freq]
        self._dtype = torch.float16 if cfg.dtype == "float16" else torch.float32

    def n_frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.hop_length

    def __call__(self, wave: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.from_power(self.power(wave))

    def power(self, wave: np.ndarray | torch.Tensor) -> np.ndarray:
        """The power mel ``[n_mels, frames]`` (float32) before the log: what the audio
        fingerprint (``dataprep.dedup.mel_fingerprint``) reads, so it needs no FFT of its own."""
        x = torch.as_tensor(np.asarray(wave, dtype=np.float32))
        if x.ndim != 1:
            raise ValueError(f"LogMel expects a mono 1-D waveform, got shape {tuple(x.shape)}")
        n = x.shape[0]
        min_len = self.cfg.n_fft // 2 + 1
        if n < min_len:
            x = torch.nn.functional.pad(x, (0, min_len - n))
        with torch.no_grad():
            # The centred STFT's reflect padding, by hand: torch.stft's own goes through a
            # 3-D F.pad that costs 4x these two flipped slices (the values are the same).
            pad = self.cfg.n_fft // 2
            x = torch.cat([x[1 : pad + 1].flip(0), x, x[-pad - 1 : -1].flip(0)])
            spec = torch.stft(
                x,
                n_fft=self.cfg.n_fft,
                hop_length=self.hop_length,
                win_length=self.cfg.win_length,
                window=self._window,
                center=False,
                normalized=False,
                onesided=True,
                return_complex=True,
            )  # [freq, frames], stored frames-major
            squares = torch.view_as_real(spec.T).square()  # [frames, freq, 2], contiguous
            mel = torch.mm(self._fb_t, (squares[..., 0] + squares[..., 1]).T)  # [n_mels, frames]
        return mel[:, : self.n_frames(n)].contiguous().numpy()

    def from_power(self, power: np.ndarray) -> np.ndarray:
        """log(power + offset) in ``cfg.dtype``: the features of :meth:`power`'s output."""
        mel = torch.log(torch.from_numpy(power) + self.cfg.log_offset)
        return mel.to(self._dtype).numpy()


def make_featurizer(cfg: FeatureConfig, hop_length: int | None = None) -> Any:
    """The featurizer of ``cfg.preset``: :class:`LogMel` by default, else the pretrained
    tower's exact input (``dataprep.core.feature_presets``). Each maps a mono waveform to
    ``[n_mels, frames]`` in ``cfg.dtype``."""
    if cfg.preset == "logmel":
        return LogMel(cfg, hop_length)
    if hop_length is not None:
        raise ValueError(f"features.preset={cfg.preset} has no multirate views")
    return preset_featurizer(cfg)


@lru_cache(maxsize=8)
def _cached(cfg_json: str, hop: int | None) -> Any:
    return make_featurizer(FeatureConfig.model_validate_json(cfg_json), hop)


def log_mel(wave: np.ndarray, cfg: FeatureConfig, hop_length: int | None = None) -> np.ndarray:
    """Convenience wrapper reusing one featurizer per config (the filterbank is not free);
    follows ``cfg.preset`` like :func:`make_featurizer`."""
    return _cached(cfg.model_dump_json(), hop_length)(wave)
