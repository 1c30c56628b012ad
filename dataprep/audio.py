"""Decode, resample, downmix, loudness-normalize, trim and segment one input recording.

One call of :func:`load_segments` decodes a ``SampleRef``'s audio exactly once (no temp files):
soundfile/libsndfile first (wav, flac, ogg/vorbis, opus, mp3 — dispatched on content, not on the
file extension), FFmpeg through torchcodec as fallback (m4a/aac, odd containers). Only the
region the reference selects (``start_s``/``end_s``) and at most ``max_segments_per_source`` x
``max_segment_s`` seconds are read, so a huge file never sits in memory whole.

Quality numbers are measured on the decoded audio *before* any gain (a silent clip stays silent,
a clipped clip keeps its clip ratio) and travel in ``Segment.stats``; the filters decide.
Every failure is an :class:`AudioError` with a short machine-readable ``reason``.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import scipy.signal
import soundfile as sf
import torch
import torchaudio

from dataprep.core.config import AudioConfig
from dataprep.core.sample import SampleRef

log = logging.getLogger(__name__)

CLIP_LEVEL = 0.999  # |x| at or above this counts as a clipped sample (int16 full scale = 0.99997)
CLIP_FLAG_RATIO = 0.001  # kept-but-flagged above this; FilterConfig.max_clip_ratio rejects
STATS_FLOOR_DB = -120.0  # stats must stay finite (JSON); digital silence reads as this
SILENCE_FRAME_DBFS = -60.0  # a 20-ms frame below this counts towards silence_ratio
DURATION_MISMATCH = 0.10  # declared vs decoded duration: flag when off by more than 10 %
SILENT_LUFS = -70.0  # BS.1770 absolute gate: quieter audio is not gain-normalized
# Decodable rates outside this range are not audio we can use (a 1-Hz "recording" upsampled to
# 16 kHz is not sound; a header claiming GHz rates is corrupt): reason ``bad_sample_rate``.
MIN_SAMPLE_RATE_HZ = 1000
MAX_SAMPLE_RATE_HZ = 1_000_000
MAX_POLYPHASE_FACTOR = 1000  # see resample(): larger reduced ratios use soxr
_FRAME_S = 0.02
_HOP_S = 0.01

_MAGIC = (
    b"RIFF",
    b"RIFX",
    b"RF64",
    b"fLaC",
    b"OggS",
    b"ID3",
    b"FORM",
    b".snd",
    b"caff",
    b"\x1aE\xdf\xa3",
)


class AudioError(Exception):
    """Why an input could not be decoded/normalized. ``reason`` is a short id for reject rows."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


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


@dataclass
class Decoded:
    """Raw decoded audio (frames x channels, float32) plus what the container declared."""

    samples: np.ndarray
    sample_rate_hz: int
    header_duration_s: float | None
    truncated: bool  # stopped at the decode limit; the source is longer
    decoder: str


# --------------------------------------------------------------------------------- decoding


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> str:
    return uri.removeprefix("file://")


def _check_exists(uri: str) -> None:
    """missing_file / empty_file before any decoder sees the input."""
    if _is_local(uri):
        path = _local_path(uri)
        if not os.path.isfile(path):
            raise AudioError("missing_file", f"{uri} does not exist")
        size = os.path.getsize(path)
    else:
        fs, path = fsspec.core.url_to_fs(uri)
        try:
            info = fs.info(path)
        except (FileNotFoundError, OSError) as err:
            raise AudioError("missing_file", f"{uri} does not exist ({err})") from None
        size = info.get("size")
    if size == 0:
        raise AudioError("empty_file", f"{uri} is 0 bytes")


def _read_bytes(uri: str) -> bytes:
    with fsspec.open(uri, "rb") as fh:
        return fh.read()


def _sniff(head: bytes) -> str:
    """``decode_error`` if the bytes look like an audio container, else ``not_audio``."""
    if (
        head.startswith(_MAGIC)
        or head[4:8] == b"ftyp"
        or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"\xff\xf1", b"\xff\xf9")
    ):
        return "decode_error"
    return "not_audio"


def _decode_soundfile(src: Any, start_s: float, stop_s: float | None, limit_s: float) -> Decoded:
    with sf.SoundFile(src) as f:
        sr = int(f.samplerate)
        total = int(f.frames) if f.frames and f.frames > 0 else None
        header = total / sr if total else None
        start = round(start_s * sr)
        if start:
            f.seek(min(start, total or start))
        want = round(limit_s * sr) if math.isfinite(limit_s) else None
        if stop_s is not None:
            region = max(0, round(stop_s * sr) - start)
            want = region if want is None else min(want, region)
        # One frame past the limit tells whether the source goes on (cropped) or ends here.
        data = f.read(frames=-1 if want is None else want + 1, dtype="float32", always_2d=True)
    truncated = (
        want is not None
        and data.shape[0] > want
        and (stop_s is None or start + want < round(stop_s * sr))
    )
    if want is not None:
        data = data[:want]
    return Decoded(data, sr, header, truncated, "soundfile")


def _decode_ffmpeg(
    src: str | bytes, start_s: float, stop_s: float | None, limit_s: float
) -> Decoded:
    from torchcodec.decoders import AudioDecoder  # optional backend: imported on first fallback

    dec = AudioDecoder(src)
    meta = dec.metadata
    header = getattr(meta, "duration_seconds_from_header", None)
    stop = start_s + limit_s if stop_s is None else min(stop_s, start_s + limit_s)
    truncated = header is not None and header > stop + 1e-3 and (stop_s is None or stop_s > stop)
    if truncated:
        # Known to be longer than we may hold: let FFmpeg seek and decode the window only.
        samples = dec.get_samples_played_in_range(start_s, stop)
        data = samples.data.numpy().T
    else:
        # Range reads from some containers (WebM without a duration, Opus with pre-skip) came
        # back short in tests; a file not known to be long is decoded whole and cut here.
        samples = dec.get_all_samples()
        sr = int(samples.sample_rate)
        a = round(start_s * sr)
        b = round(stop * sr) if math.isfinite(stop) else None
        data = samples.data.numpy().T[a:b]
        truncated = b is not None and stop_s is None and samples.data.shape[1] > b
    data = np.ascontiguousarray(data, dtype=np.float32)
    return Decoded(data, int(samples.sample_rate), header, truncated, "ffmpeg")


def decode(
    uri: str, start_s: float = 0.0, end_s: float | None = None, limit_s: float = math.inf
) -> Decoded:
    """Decode ``[start_s, end_s)`` of ``uri`` (at most ``limit_s`` seconds). Raises AudioError.

    Remote files are read through a seekable fsspec file first, so only the blocks the decoder
    asks for travel; a server without range requests, or the FFmpeg fallback, gets the bytes.
    """
    _check_exists(uri)
    local = _is_local(uri)
    data: bytes | None = None
    errors = []
    try:
        if local:
            return _decode_soundfile(_local_path(uri), start_s, end_s, limit_s)
        try:
            with fsspec.open(uri, "rb", block_size=1 << 20) as fh:
                return _decode_soundfile(fh, start_s, end_s, limit_s)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as err:
            log.debug("streamed read of %s failed (%s); reading it whole", uri, err)
        data = _read_bytes(uri)
        return _decode_soundfile(io.BytesIO(data), start_s, end_s, limit_s)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        errors.append(f"soundfile: {err}")
    except OSError as err:
        raise AudioError("read_error", f"{uri}: {err}") from None
    try:
        return _decode_ffmpeg(_local_path(uri) if local else data, start_s, end_s, limit_s)
    except Exception as err:  # noqa: BLE001 - any FFmpeg failure becomes a reason, not a crash
        errors.append(f"ffmpeg: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    if data is None:
        with open(_local_path(uri), "rb") as fh:
            head = fh.read(16)
    else:
        head = data[:16]
    raise AudioError(_sniff(head), f"{uri}: " + "; ".join(errors))


# ------------------------------------------------------------------------------ measurement


def _db(x: float) -> float:
    return max(STATS_FLOOR_DB, 20.0 * math.log10(x)) if x > 0 else STATS_FLOOR_DB


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


def frame_rms(wave: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """RMS of 20-ms frames every 10 ms (at least one frame)."""
    return _frames_from_hops(hop_mean_square(wave, sample_rate_hz))


def _frames_from_hops(ms: np.ndarray) -> np.ndarray:
    if ms.size < 2:
        return np.sqrt(ms)
    return np.sqrt((ms[:-1] + ms[1:]) * 0.5)


@functools.lru_cache(maxsize=8)
def _k_weighting(sample_rate_hz: int) -> np.ndarray:
    """BS.1770 K-weighting as second-order sections, with pyloudnorm's own coefficients."""
    import pyloudnorm

    meter = pyloudnorm.Meter(sample_rate_hz)
    stages = [meter._filters["high_shelf"], meter._filters["high_pass"]]
    # float32 sections keep sosfilt in single precision: no float64 copy of the signal.
    return np.array([np.concatenate([f.b, f.a]) for f in stages], dtype=np.float32)


def loudness_lufs(wave: np.ndarray, sample_rate_hz: int) -> float:
    """Integrated loudness, BS.1770-4 gating as pyloudnorm computes it, vectorized.

    pyloudnorm loops over 400-ms blocks in Python; here the K-weighted signal is summed per
    100-ms step once and blocks are sums of four steps (same numbers, a fraction of the time).
    Clips under one block get their RMS level.
    """
    step = round(0.1 * sample_rate_hz)
    if wave.shape[0] < 4 * step:
        return _db(math.sqrt(float(np.dot(wave, wave)) / max(1, wave.shape[0])))
    y = scipy.signal.sosfilt(_k_weighting(sample_rate_hz), wave.astype(np.float32, copy=False))
    n = y.shape[0] // step
    steps = np.einsum("ij,ij->i", y[: n * step].reshape(n, step), y[: n * step].reshape(n, step))
    steps = steps.astype(np.float64)
    rest = y[n * step :]
    if rest.size * 2 >= step:
        # pyloudnorm rounds the block count, so a last step half full or more counts
        # (zero-padded); matching it keeps our numbers equal to the reference meter's.
        steps = np.append(steps, float(np.dot(rest, rest)))
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


@functools.lru_cache(maxsize=16)
def _resampler(orig_hz: int, target_hz: int) -> Any:
    # torchaudio's Resample builds the windowed-sinc kernel once; functional.resample rebuilds it
    # on every call, which cost more than the convolution itself (44.1 -> 16 kHz: ~60 ms/call).
    g = math.gcd(orig_hz, target_hz)
    return torchaudio.transforms.Resample(orig_hz // g, target_hz // g)


def resample(wave: np.ndarray, orig_hz: int, target_hz: int) -> np.ndarray:
    """Same numbers as ``torchaudio.functional.resample`` (default sinc window), kernel cached.

    torchaudio's polyphase kernel has ``orig/g x target/g`` taps (g = their gcd): 441 x 160 for
    44.1 kHz, but 13101 x 16000 for a 13101 Hz file, which took minutes and gigabytes (found
    by the property test). Such rate pairs go through soxr, which converts any ratio in
    linear time; every common rate keeps the torchaudio path and its exact numbers.
    """
    if orig_hz == target_hz:
        return wave
    g = math.gcd(orig_hz, target_hz)
    if max(orig_hz // g, target_hz // g) > MAX_POLYPHASE_FACTOR:
        import soxr  # a librosa dependency; imported only for these odd rates

        return soxr.resample(wave, orig_hz, target_hz, quality="HQ").astype(np.float32)
    with torch.no_grad():
        out = _resampler(orig_hz, target_hz)(torch.from_numpy(np.ascontiguousarray(wave)))
    return out.numpy()


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


# ----------------------------------------------------------------------------- the stage


def load_segments(ref: SampleRef, audio_cfg: AudioConfig, sample_rate_hz: int) -> list[Segment]:
    """Decode ``ref`` once and return normalized segments (see module docstring).

    Raises :class:`AudioError` (missing_file, empty_file, read_error, not_audio, decode_error,
    empty_audio, non_finite, bad_region, bad_sample_rate).
    """
    start_s = float(ref.start_s or 0.0)
    if start_s < 0 or (ref.end_s is not None and ref.end_s <= start_s):
        raise AudioError("bad_region", f"region [{ref.start_s}, {ref.end_s}] is empty or negative")
    step = audio_cfg.max_segment_s - audio_cfg.segment_overlap_s
    limit_s = audio_cfg.max_segment_s + step * max(0, audio_cfg.max_segments_per_source - 1)
    dec = decode(ref.audio, start_s, ref.end_s, limit_s)
    if not MIN_SAMPLE_RATE_HZ <= dec.sample_rate_hz <= MAX_SAMPLE_RATE_HZ:
        raise AudioError(
            "bad_sample_rate",
            f"{ref.audio}: {dec.sample_rate_hz} Hz is outside "
            f"[{MIN_SAMPLE_RATE_HZ}, {MAX_SAMPLE_RATE_HZ}] Hz",
        )
    raw = dec.samples
    if raw.shape[0] == 0:
        raise AudioError("empty_audio", f"{ref.audio}: no samples decoded in the selected region")
    # max/min propagate NaN and Inf, so two cheap reductions stand in for an isfinite pass.
    top, bottom = float(raw.max()), float(raw.min())
    if not (math.isfinite(top) and math.isfinite(bottom)):
        bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
        raise AudioError("non_finite", f"{ref.audio}: {bad} NaN/Inf samples after decoding")
    source_peak = max(top, -bottom)
    clip_ratio = 0.0
    if source_peak >= CLIP_LEVEL:
        clip_ratio = float(np.count_nonzero(np.abs(raw) >= CLIP_LEVEL)) / raw.size
    if raw.shape[1] > 1:
        # A matrix-vector product downmixes ~10x faster than a strided mean over channels.
        mono = raw @ np.full(raw.shape[1], 1.0 / raw.shape[1], dtype=np.float32)
    else:
        mono = raw[:, 0]
    wave = resample(mono, dec.sample_rate_hz, sample_rate_hz).astype(np.float32, copy=False)
    decoded_s = raw.shape[0] / dec.sample_rate_hz

    rms = _frames_from_hops(hop_mean_square(wave, sample_rate_hz))
    silence_ratio = float(np.count_nonzero(rms < 10.0 ** (SILENCE_FRAME_DBFS / 20.0))) / rms.size
    lufs = loudness_lufs(wave, sample_rate_hz)
    peak = max(float(wave.max()), -float(wave.min()))
    if peak <= 0.0 or lufs < SILENT_LUFS:
        gain = 1.0  # (near-)silence: nothing to normalize; never blow up the noise floor
    elif audio_cfg.target_lufs is None:
        gain = audio_cfg.peak_limit / peak
    else:
        gain = 10.0 ** ((audio_cfg.target_lufs - lufs) / 20.0)
    if peak * gain > audio_cfg.peak_limit:
        gain = audio_cfg.peak_limit / peak  # the limit wins over the loudness target

    lo, hi = 0, wave.shape[0]
    if audio_cfg.trim_silence_db is not None and peak > 0.0:
        lo, hi = _trim_from_rms(rms, wave.shape[0], sample_rate_hz, audio_cfg.trim_silence_db)
    body = wave[lo:hi] * np.float32(gain)

    flags = []
    if clip_ratio >= CLIP_FLAG_RATIO:
        flags.append("clipping")
    if dec.truncated:
        flags.append("source_cropped")
    declared = ref.duration_s
    if (
        declared is not None
        and declared > 0
        and ref.start_s is None
        and ref.end_s is None
        and not dec.truncated
        and abs(decoded_s - declared) > DURATION_MISMATCH * declared
    ):
        flags.append("duration_mismatch")
        log.info("%s: declared %.3f s, decoded %.3f s", ref.audio, declared, decoded_s)
    if dec.sample_rate_hz < sample_rate_hz:
        flags.append("upsampled")

    source_stats = {
        "lufs": lufs,
        "gain_db": _db(gain) if gain > 0 else STATS_FLOOR_DB,
        "source_peak": source_peak,
        "clip_ratio": clip_ratio,
        "silence_ratio": silence_ratio,
        "decoded_duration_s": decoded_s,
        "source_duration_s": dec.header_duration_s
        if dec.header_duration_s is not None
        else decoded_s,
        "source_sample_rate_hz": float(dec.sample_rate_hz),
        "declared_duration_s": float(declared) if declared is not None else -1.0,
    }
    offset_s = start_s + lo / sample_rate_hz
    body_s = body.shape[0] / sample_rate_hz
    starts = segment_starts(body_s, audio_cfg.max_segment_s, audio_cfg.segment_overlap_s)
    if len(starts) > audio_cfg.max_segments_per_source:
        starts = starts[: audio_cfg.max_segments_per_source]
        if "source_cropped" not in flags:
            flags.append("source_cropped")
    segments = []
    for s in starts:
        a = round(s * sample_rate_hz)
        b = min(body.shape[0], a + round(audio_cfg.max_segment_s * sample_rate_hz))
        piece = body[a:b]
        if audio_cfg.segment_overlap_s > 0:
            piece = piece.copy()  # overlapping views would let an in-place edit leak across
        stats = dict(source_stats)
        if piece.size:
            stats["dbfs"] = _db(math.sqrt(float(np.dot(piece, piece)) / piece.size) / gain)
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
