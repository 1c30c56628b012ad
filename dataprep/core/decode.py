"""Decoding: any codec, container, rate or channel count -> float32 frames x channels.

One owner for reading audio bytes, used by the shard builder (``dataprep.audio``), the
evaluator (through it) and inference (``dataprep.core.waveform.load_waveform``):
soundfile/libsndfile first (wav, flac, ogg/vorbis, opus, mp3 - dispatched on content, not on
the file extension), FFmpeg through torchcodec as fallback (m4a/aac, odd containers). Only the
region asked for (``start_s``/``end_s``, at most ``limit_s`` seconds) is read, so a huge file
never sits in memory whole. Every failure is an :class:`AudioError` with a short
machine-readable ``reason``.
"""

from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

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


@dataclass
class Decoded:
    """Raw decoded audio (frames x channels, float32) plus what the container declared."""

    samples: np.ndarray
    sample_rate_hz: int
    header_duration_s: float | None
    truncated: bool  # stopped at the decode limit; the source is longer
    decoder: str


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


# Integer PCM is read as integers and scaled here: libsndfile's own float conversion costs
# ~2x the read of a 16-bit WAV, and its result is exactly ``int * 2**-(bits - 1)`` in float32
# (checked for every subtype below in tests/dataprep/test_decode.py), which is what this gives.
_INT_READS = {
    "PCM_S8": ("int16", 2.0**-15),
    "PCM_U8": ("int16", 2.0**-15),
    "PCM_16": ("int16", 2.0**-15),
    "PCM_24": ("int32", 2.0**-31),
    "PCM_32": ("int32", 2.0**-31),
}


def _read_float32(f: sf.SoundFile, frames: int) -> np.ndarray:
    """``frames`` (-1: to the end) of ``f`` as float32 frames x channels, libsndfile's values."""
    how = _INT_READS.get(f.subtype)
    if how is None:
        return f.read(frames=frames, dtype="float32", always_2d=True)
    ints = f.read(frames=frames, dtype=how[0], always_2d=True)
    out = ints.astype(np.float32)
    out *= np.float32(how[1])
    return out


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
        data = _read_float32(f, -1 if want is None else want + 1)
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
