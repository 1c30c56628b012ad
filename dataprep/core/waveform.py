"""decode -> mono -> resample -> loudness gain: the one waveform path of build, eval and inference.

:func:`load_waveform` turns a file/URI (any codec, rate, channel count; see
``dataprep.core.decode``) or an in-memory array into mono float32 at the feature rate plus the
loudness gain the build applies (``build.audio.target_lufs`` / ``peak_limit``). The shard builder
(``dataprep.audio.load_segments``, which the evaluator runs through ``SampleProcessor``) measures,
trims and segments that waveform; inference (``model.api``) embeds it whole. The featurizer that
follows is ``dataprep.core.features.make_featurizer`` of the model's feature config.

Trimming is a build step only: it curates *training* clips (leading/trailing silence says
nothing about the caption). Inference never trims: the caller's audio is the query, and trimming
it changed what was embedded (a 5-s ESC-50 clip came out as 0.73 s). Long audio is cut with
:func:`segment_starts` (the build's segmenting) and each segment's features with
:func:`mel_windows` (the evaluator's windows), so an embedding of a long file is made of the same
pieces an evaluation of it would be.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.signal
import soxr
import torch

from dataprep.core.config import AudioConfig
from dataprep.core.decode import AudioError, decode

STATS_FLOOR_DB = -120.0  # stats must stay finite (JSON); digital silence reads as this
SILENT_LUFS = -70.0  # BS.1770 absolute gate: quieter audio is not gain-normalized
# Decodable rates outside this range are not audio we can use (a 1-Hz "recording" upsampled to
# 16 kHz is not sound; a header claiming GHz rates is corrupt): reason ``bad_sample_rate``.
MIN_SAMPLE_RATE_HZ = 1000
MAX_SAMPLE_RATE_HZ = 1_000_000
CLIP_LEVEL = 0.999  # |x| at or above this counts as a clipped sample (int16 full scale = 0.99997)


def level_db(x: float) -> float:
    """20 log10(x), floored at ``STATS_FLOOR_DB`` (0 and below read as the floor)."""
    return max(STATS_FLOOR_DB, 20.0 * math.log10(x)) if x > 0 else STATS_FLOOR_DB


@functools.lru_cache(maxsize=8)
def _k_weighting(sample_rate_hz: int) -> tuple[np.ndarray, np.ndarray]:
    """BS.1770 K-weighting, pyloudnorm's two biquads (its own float64 coefficients) as one
    fourth-order ``(b, a)``: one ``lfilter`` pass in float64 costs ~0.85x two float32 sosfilt
    sections (and has no per-call section checks), and is nearer pyloudnorm's float64 cascade."""
    import pyloudnorm

    meter = pyloudnorm.Meter(sample_rate_hz)
    stages = [meter._filters["high_shelf"], meter._filters["high_pass"]]
    b = np.convolve(np.asarray(stages[0].b, np.float64), np.asarray(stages[1].b, np.float64))
    a = np.convolve(np.asarray(stages[0].a, np.float64), np.asarray(stages[1].a, np.float64))
    return b, a


def loudness_lufs(wave: np.ndarray, sample_rate_hz: int) -> float:
    """Integrated loudness, BS.1770-4 gating as pyloudnorm computes it, vectorized.

    pyloudnorm loops over 400-ms blocks in Python; here the K-weighted signal is summed per
    100-ms step once and blocks are sums of four steps (same numbers, a fraction of the time).
    Clips under one block get their RMS level.
    """
    step = round(0.1 * sample_rate_hz)
    if wave.shape[0] < 4 * step:
        return level_db(math.sqrt(float(np.dot(wave, wave)) / max(1, wave.shape[0])))
    b, a = _k_weighting(sample_rate_hz)
    y = scipy.signal.lfilter(b, a, wave)  # float64
    n = y.shape[0] // step
    steps = np.einsum("ij,ij->i", y[: n * step].reshape(n, step), y[: n * step].reshape(n, step))
    # pyloudnorm's block count, in its own float arithmetic: round((T - 0.4 s) / 0.1 s) + 1,
    # numpy rounding half to even; a last step it counts beyond the full ones is the rest of
    # the signal (its mean square still over the whole block, as pyloudnorm divides).
    blocks_n = int(np.round((y.shape[0] / sample_rate_hz - 0.4) / (0.4 * 0.25))) + 1
    if blocks_n + 3 > n:
        rest = y[n * step :]
        steps = np.append(steps, float(np.dot(rest, rest)))
    steps = steps[: blocks_n + 3]
    z = (steps[:-3] + steps[1:-2] + steps[2:-1] + steps[3:]) / (4 * step)
    with np.errstate(divide="ignore"):
        blocks = -0.691 + 10.0 * np.log10(z)
    gated = z[blocks >= -70.0]
    if gated.size == 0:
        return STATS_FLOOR_DB
    relative = -0.691 + 10.0 * math.log10(float(gated.mean())) - 10.0
    final = z[(blocks >= -70.0) & (blocks >= relative)]
    value = -0.691 + 10.0 * math.log10(float(final.mean())) if final.size else STATS_FLOOR_DB
    return max(STATS_FLOOR_DB, value)


def resample(wave: np.ndarray, orig_hz: int, target_hz: int) -> np.ndarray:
    """Mono float32 ``wave`` from ``orig_hz`` to ``target_hz`` with soxr (``HQ``), in float32.

    soxr converts any rate ratio in linear time (torchaudio's polyphase kernel had
    ``orig/g x target/g`` taps: 13101 x 16000 for a 13101 Hz file, minutes and gigabytes), ran
    1.5-3x faster than torchaudio's cached ``Resample`` on the bench rates (48/44.1/32 -> 16 kHz,
    bench/RESULTS.md), and is flat to 0.92 x Nyquist with a steep stop band, where torchaudio's
    default Hann sinc droops 1.5 dB at 7 kHz and lets ~-4 dB through just below 8 kHz. It is
    also what ``librosa.load(sr=...)`` uses (``soxr_hq``).
    """
    if orig_hz == target_hz:
        return wave
    x = np.ascontiguousarray(wave, dtype=np.float32)
    return soxr.resample(x, orig_hz, target_hz, quality="HQ")


# ------------------------------------------------------------------------------ one waveform


@dataclass
class Waveform:
    """Mono float32 at ``sample_rate_hz`` *before* gain, the gain the build applies, and what
    was measured on the way (quality numbers are taken before any gain)."""

    wave: np.ndarray
    sample_rate_hz: int
    gain: float
    lufs: float
    peak: float  # of ``wave`` (before gain)
    source_peak: float  # of the decoded samples, all channels, before resampling
    clip_ratio: float
    source_rate_hz: int
    decoded_s: float
    header_duration_s: float | None = None
    truncated: bool = False  # the decode stopped at its limit; the source goes on

    def normalized(self) -> np.ndarray:
        """``wave`` times the gain: what is featurized."""
        return self.wave if self.gain == 1.0 else self.wave * np.float32(self.gain)


def as_frames(array: Any, name: str) -> np.ndarray:
    """An in-memory signal as float32 frames x channels: 1-D is mono, 2-D is frames x channels
    (soundfile's layout) unless it is clearly channels-first (torchaudio's: at most 16 rows and
    more columns than rows). Integer PCM is scaled to [-1, 1)."""
    x = np.asarray(array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else array)
    if x.dtype.kind in "iu":
        bits = x.dtype.itemsize * 8
        x = x.astype(np.float64) / 2 ** (bits - 1) - (1.0 if x.dtype.kind == "u" else 0.0)
    elif x.dtype.kind != "f":
        raise AudioError("not_audio", f"{name}: an array of {x.dtype} is not audio")
    if x.ndim == 1:
        x = x[:, None]
    elif x.ndim == 2 and x.shape[0] <= 16 < x.shape[1]:
        x = x.T
    elif x.ndim != 2:
        raise AudioError("not_audio", f"{name}: expected 1-D or 2-D audio, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def gain_for(
    wave: np.ndarray, sample_rate_hz: int, audio: AudioConfig
) -> tuple[float, float, float]:
    """``(gain, lufs, peak)`` of the build's loudness normalization: ``audio.target_lufs`` (or
    peak normalization when it is None), never above ``audio.peak_limit``, never on silence."""
    lufs = loudness_lufs(wave, sample_rate_hz)
    peak = max(float(wave.max()), -float(wave.min()))
    if peak <= 0.0 or lufs < SILENT_LUFS:
        gain = 1.0  # (near-)silence: nothing to normalize; never blow up the noise floor
    elif audio.target_lufs is None:
        gain = audio.peak_limit / peak
    else:
        gain = 10.0 ** ((audio.target_lufs - lufs) / 20.0)
    if peak * gain > audio.peak_limit:
        gain = audio.peak_limit / peak  # the limit wins over the loudness target
    return gain, lufs, peak


def load_waveform(
    src: Any,
    sample_rate_hz: int,
    audio: AudioConfig | None,
    *,
    source_rate_hz: int | None = None,
    start_s: float = 0.0,
    end_s: float | None = None,
    limit_s: float = math.inf,
    name: str | None = None,
) -> Waveform:
    """Decode ``src`` (a path/URI, or an array with ``source_rate_hz``), downmix, resample to
    ``sample_rate_hz`` and compute the loudness gain of ``audio`` (None: no normalization, gain 1,
    as an imported LAION-CLAP expects). Raises :class:`AudioError` (the decode reasons, plus
    bad_sample_rate, empty_audio, non_finite)."""
    if isinstance(src, (str, bytes)) or hasattr(src, "__fspath__"):
        name = name or str(src)
        dec = decode(str(src), start_s, end_s, limit_s)
        raw, rate, header, truncated = (
            dec.samples,
            dec.sample_rate_hz,
            dec.header_duration_s,
            dec.truncated,
        )
    else:
        name = name or "array"
        if source_rate_hz is None:
            raise AudioError("bad_sample_rate", f"{name}: an array needs its sample_rate")
        raw, rate, header, truncated = as_frames(src, name), int(source_rate_hz), None, False
    if not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ:
        raise AudioError(
            "bad_sample_rate",
            f"{name}: {rate} Hz is outside [{MIN_SAMPLE_RATE_HZ}, {MAX_SAMPLE_RATE_HZ}] Hz",
        )
    if raw.shape[0] == 0:
        raise AudioError("empty_audio", f"{name}: no samples decoded in the selected region")
    # max/min propagate NaN and Inf, so two cheap reductions stand in for an isfinite pass.
    top, bottom = float(raw.max()), float(raw.min())
    if not (math.isfinite(top) and math.isfinite(bottom)):
        bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
        raise AudioError("non_finite", f"{name}: {bad} NaN/Inf samples after decoding")
    source_peak = max(top, -bottom)
    clip_ratio = 0.0
    if source_peak >= CLIP_LEVEL:
        clip_ratio = float(np.count_nonzero(np.abs(raw) >= CLIP_LEVEL)) / raw.size
    if raw.shape[1] > 1:
        # A matrix-vector product downmixes ~10x faster than a strided mean over channels.
        mono = raw @ np.full(raw.shape[1], 1.0 / raw.shape[1], dtype=np.float32)
    else:
        mono = raw[:, 0]
    wave = resample(mono, rate, sample_rate_hz)
    if wave.shape[0] == 0:
        raise AudioError(
            "empty_audio", f"{name}: {raw.shape[0]} samples at {rate} Hz round to none at "
            f"{sample_rate_hz} Hz"
        )  # fmt: skip
    if audio is None:
        gain, lufs, peak = 1.0, float("nan"), max(float(wave.max()), -float(wave.min()))
    else:
        gain, lufs, peak = gain_for(wave, sample_rate_hz, audio)
    return Waveform(
        wave,
        sample_rate_hz,
        gain,
        lufs,
        peak,
        source_peak,
        clip_ratio,
        rate,
        raw.shape[0] / rate,
        header,
        truncated,
    )


# ---------------------------------------------------------------------- windows for embedding


def segment_starts(duration_s: float, max_segment_s: float, overlap_s: float) -> list[float]:
    """Window starts covering ``duration_s``; the last window ends at the end (no stub tail)."""
    if duration_s <= max_segment_s:
        return [0.0]
    step = max_segment_s - overlap_s
    if step <= 0:
        raise ValueError(
            f"segment_overlap_s={overlap_s} must be below max_segment_s={max_segment_s}"
        )
    n = math.ceil((duration_s - max_segment_s) / step) + 1
    starts = [i * step for i in range(n - 1)] + [duration_s - max_segment_s]
    return sorted({round(s, 6) for s in starts})


def _window_starts(t: int, max_frames: int) -> list[int]:
    if t <= max_frames:
        return [0]
    starts = list(range(0, t - max_frames + 1, max_frames))
    if starts[-1] + max_frames < t:
        starts.append(t - max_frames)
    return starts


def mel_windows(mel: np.ndarray, max_frames: int) -> list[np.ndarray]:
    """A ``[n_mels, T]`` feature cut into consecutive ``max_frames`` windows, the last one
    aligned to the end so no frame is dropped (what the audio tower sees at most at once)."""
    return [mel[:, s : s + max_frames] for s in _window_starts(mel.shape[1], max_frames)]


def feature_windows(
    wave: np.ndarray,
    sample_rate_hz: int,
    featurizer: Any,
    *,
    segment_s: float,
    overlap_s: float,
    max_frames: int,
) -> list[tuple[float, float, np.ndarray]]:
    """``(start_s, end_s, features)`` per model input of a whole normalized waveform: segments
    as the build cuts them, each featurized, each feature cut by :func:`mel_windows`."""
    out = []
    duration = wave.shape[0] / sample_rate_hz
    hop_s = featurizer.cfg.hop_length / sample_rate_hz
    for s in segment_starts(duration, segment_s, overlap_s):
        a = round(s * sample_rate_hz)
        b = min(wave.shape[0], a + round(segment_s * sample_rate_hz))
        mel = featurizer(wave[a:b])
        seg_end = s + (b - a) / sample_rate_hz
        for f in _window_starts(mel.shape[1], max_frames):
            start = s + f * hop_s
            end = min(seg_end, start + max_frames * hop_s)
            out.append((round(start, 6), round(end, 6), mel[:, f : f + max_frames]))
    return out
