"""Measure, trim and segment one input recording (decode/normalize: ``dataprep.core.waveform``).

One call of :func:`load_segments` decodes a ``SampleRef``'s audio exactly once (no temp files)
through :func:`dataprep.core.waveform.load_waveform`, the one decode -> mono -> resample ->
loudness path that evaluation and inference share. Only the region the reference selects
(``start_s``/``end_s``) and at most ``max_segments_per_source`` x ``max_segment_s`` seconds are
read, so a huge file never sits in memory whole.

Quality numbers are measured on the decoded audio *before* any gain (a silent clip stays silent,
a clipped clip keeps its clip ratio) and travel in ``Segment.stats``; the filters decide. A
segment's level (``dbfs``) is measured without its DC offset, so a constant signal is silent.
Every failure is an :class:`AudioError` with a short machine-readable ``reason``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from dataprep.core.config import AudioConfig
from dataprep.core.decode import AudioError, Decoded, decode  # noqa: F401  (re-exported)
from dataprep.core.sample import SampleRef
from dataprep.core.waveform import (  # noqa: F401  (re-exported: the stage's public names)
    CLIP_LEVEL,
    MAX_SAMPLE_RATE_HZ,
    MIN_SAMPLE_RATE_HZ,
    SILENT_LUFS,
    STATS_FLOOR_DB,
    load_waveform,
    loudness_lufs,
    resample,
    segment_starts,
)
from dataprep.core.waveform import level_db as _db

log = logging.getLogger(__name__)

SILENCE_FRAME_DBFS = -60.0  # a 20-ms frame below this counts towards silence_ratio
DURATION_MISMATCH = 0.10  # declared vs decoded duration: flag when off by more than 10 %
WHOLE_TRIM_MARGIN_S = 5.0  # an utterance is decoded this far past its limit: trimming may fit it
_FRAME_S = 0.02
_HOP_S = 0.01


@dataclass(frozen=True)
class Segment:
    """One normalized piece of a recording: float32 mono at the target rate."""

    start_s: float  # position in the source recording (seconds), after trimming/cutting
    end_s: float
    wave: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)
    flags: tuple[str, ...] = ()

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


# ------------------------------------------------------------------------------ measurement


def hop_mean_square(wave: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """Mean square of consecutive 10-ms hops (a shorter last hop included); one pass, no copy."""
    hop = max(1, int(_HOP_S * sample_rate_hz))
    n = wave.shape[0] // hop
    body = wave[: n * hop].reshape(n, hop)
    out = np.einsum("ij,ij->i", body, body).astype(np.float64) / hop
    rest = wave[n * hop :]
    if rest.size or n == 0:
        out = np.append(out, float(np.dot(rest, rest)) / max(1, rest.size))
    return out


def ac_rms(wave: np.ndarray) -> float:
    """RMS level without the DC offset: a constant (a detached microphone, a bad ADC bias) is
    no sound, so a file that is only DC must read as silent, not as loud."""
    dc = np.float32(np.mean(wave, dtype=np.float64))
    centered = wave - dc
    return math.sqrt(float(np.dot(centered, centered)) / max(1, wave.size))


def frame_rms(wave: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """RMS of 20-ms frames every 10 ms (at least one frame)."""
    return _frames_from_hops(hop_mean_square(wave, sample_rate_hz))


def _frames_from_hops(ms: np.ndarray) -> np.ndarray:
    if ms.size < 2:
        return np.sqrt(ms)
    return np.sqrt((ms[:-1] + ms[1:]) * 0.5)


def trim_bounds(wave: np.ndarray, sample_rate_hz: int, below_peak_db: float) -> tuple[int, int]:
    """First/last sample of the part louder than (loudest frame - ``below_peak_db``)."""
    return _trim_from_rms(
        frame_rms(wave, sample_rate_hz), wave.shape[0], sample_rate_hz, below_peak_db
    )


def _trim_from_rms(
    rms: np.ndarray, n_samples: int, sample_rate_hz: int, below_peak_db: float
) -> tuple[int, int]:
    top = float(rms.max())
    if top <= 0.0:
        return 0, n_samples
    active = np.flatnonzero(rms >= top * 10.0 ** (-below_peak_db / 20.0))
    hop = max(1, int(_HOP_S * sample_rate_hz))
    frame = max(1, int(_FRAME_S * sample_rate_hz))
    # One frame of margin each side keeps soft onsets and decays.
    start = max(0, (int(active[0]) - 1) * hop)
    end = min(n_samples, (int(active[-1]) + 1) * hop + frame)
    return start, end


# ----------------------------------------------------------------------------- the stage


def load_segments(
    ref: SampleRef, audio_cfg: AudioConfig, sample_rate_hz: int, whole_up_to_s: float | None = None
) -> list[Segment]:
    """Decode ``ref`` once and return normalized segments (see module docstring).

    Without ``whole_up_to_s`` a recording longer than ``max_segment_s`` is cut into windows
    (each flagged ``window``): right for sound-event clips, whose caption or labels describe
    the clip as a whole and hold for its parts. With it the input is one utterance whose text
    must cover all of its audio (a transcript): it stays ONE segment, never cut, and one that
    is longer than ``whole_up_to_s`` after trimming is ``transcript_too_long`` (the text cannot
    follow a cut, and we have no alignment to cut it with).

    Raises :class:`AudioError` (missing_file, empty_file, read_error, not_audio, decode_error,
    empty_audio, non_finite, bad_region, bad_sample_rate, transcript_too_long).
    """
    start_s = float(ref.start_s or 0.0)
    if start_s < 0 or (ref.end_s is not None and ref.end_s <= start_s):
        raise AudioError("bad_region", f"region [{ref.start_s}, {ref.end_s}] is empty or negative")
    if whole_up_to_s is None:
        step = audio_cfg.max_segment_s - audio_cfg.segment_overlap_s
        limit_s = audio_cfg.max_segment_s + step * max(0, audio_cfg.max_segments_per_source - 1)
    else:
        limit_s = whole_up_to_s + WHOLE_TRIM_MARGIN_S
    w = load_waveform(
        ref.audio,
        sample_rate_hz,
        audio_cfg,
        start_s=start_s,
        end_s=ref.end_s,
        limit_s=limit_s,
        name=ref.audio,
    )
    wave, gain, lufs, peak = w.wave, w.gain, w.lufs, w.peak
    source_peak, clip_ratio, decoded_s = w.source_peak, w.clip_ratio, w.decoded_s

    rms = _frames_from_hops(hop_mean_square(wave, sample_rate_hz))
    silence_ratio = float(np.count_nonzero(rms < 10.0 ** (SILENCE_FRAME_DBFS / 20.0))) / rms.size

    lo, hi = 0, wave.shape[0]
    if audio_cfg.trim_silence_db is not None and peak > 0.0:
        lo, hi = _trim_from_rms(rms, wave.shape[0], sample_rate_hz, audio_cfg.trim_silence_db)
    body = wave[lo:hi] * np.float32(gain)

    # ``clipping`` is not decided here: filters.audio_flags applies FilterConfig.clip_flag_ratio.
    flags = []
    if w.truncated:
        flags.append("source_cropped")
    declared = ref.duration_s
    if (
        declared is not None
        and declared > 0
        and ref.start_s is None
        and ref.end_s is None
        and not w.truncated
        and abs(decoded_s - declared) > DURATION_MISMATCH * declared
    ):
        flags.append("duration_mismatch")
        log.info("%s: declared %.3f s, decoded %.3f s", ref.audio, declared, decoded_s)
    if w.source_rate_hz < sample_rate_hz:
        flags.append("upsampled")

    source_stats = {
        "lufs": lufs,
        "gain_db": _db(gain) if gain > 0 else STATS_FLOOR_DB,
        "source_peak": source_peak,
        "clip_ratio": clip_ratio,
        "silence_ratio": silence_ratio,
        "decoded_duration_s": decoded_s,
        "source_duration_s": w.header_duration_s if w.header_duration_s is not None else decoded_s,
        "source_sample_rate_hz": float(w.source_rate_hz),
        "declared_duration_s": float(declared) if declared is not None else -1.0,
    }
    offset_s = start_s + lo / sample_rate_hz
    body_s = body.shape[0] / sample_rate_hz
    if whole_up_to_s is not None:
        if w.truncated or body_s > whole_up_to_s:
            longer = "more than " if w.truncated else ""
            raise AudioError(
                "transcript_too_long",
                f"{ref.audio}: a transcribed utterance of {longer}{body_s:.1f} s (after trimming) "
                f"> max {whole_up_to_s} s; cutting it would pair the transcript with part of "
                "its audio",
            )
        starts, window_s = [0.0], body_s
    else:
        starts = segment_starts(body_s, audio_cfg.max_segment_s, audio_cfg.segment_overlap_s)
        window_s = audio_cfg.max_segment_s
        if len(starts) > 1:
            flags.append("window")
    if len(starts) > audio_cfg.max_segments_per_source:
        starts = starts[: audio_cfg.max_segments_per_source]
        if "source_cropped" not in flags:
            flags.append("source_cropped")
    segments = []
    for s in starts:
        a = round(s * sample_rate_hz)
        b = min(body.shape[0], a + round(window_s * sample_rate_hz))
        piece = body[a:b]
        if audio_cfg.segment_overlap_s > 0:
            piece = piece.copy()  # overlapping views would let an in-place edit leak across
        stats = dict(source_stats)
        if piece.size:
            stats["dbfs"] = _db(ac_rms(piece) / gain)
            stats["peak"] = max(float(piece.max()), -float(piece.min())) / gain
        else:
            stats["dbfs"], stats["peak"] = STATS_FLOOR_DB, 0.0
        stats["duration_s"] = piece.shape[0] / sample_rate_hz
        segments.append(
            Segment(
                start_s=round(offset_s + a / sample_rate_hz, 6),
                end_s=round(offset_s + b / sample_rate_hz, 6),
                wave=piece,
                stats=stats,
                flags=tuple(flags),
            )
        )
    return segments
