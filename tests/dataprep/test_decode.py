"""The soundfile decoder's integer-PCM path gives libsndfile's own float32 values, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from dataprep.core.decode import decode

CASES = [
    ("WAV", "PCM_U8"),
    ("WAV", "PCM_16"),
    ("WAV", "PCM_24"),
    ("WAV", "PCM_32"),
    ("FLAC", "PCM_S8"),
    ("FLAC", "PCM_16"),
    ("FLAC", "PCM_24"),
    ("AIFF", "PCM_16"),
    ("WAV", "FLOAT"),  # not an integer subtype: libsndfile's float read, as before
]


def _signal(frames: int = 24000) -> np.ndarray:
    rng = np.random.default_rng(7)
    x = np.clip(rng.standard_normal((frames, 2)) * 0.4, -1.0, 1.0).astype(np.float32)
    x[:4] = [[-1.0, 1.0], [1.0, -1.0], [0.99999, -0.99999], [0.0, 1e-6]]  # the extremes
    return x


@pytest.mark.parametrize(("fmt", "subtype"), CASES)
def test_decoded_samples_equal_libsndfiles_float_read(tmp_path, fmt, subtype):
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, _signal(), 16000, format=fmt, subtype=subtype)
    want, sr = sf.read(path, dtype="float32", always_2d=True)
    got = decode(str(path))
    assert got.sample_rate_hz == sr == 16000
    assert got.samples.dtype == np.float32 and got.samples.shape == want.shape
    assert np.array_equal(got.samples, want), (fmt, subtype)
    # A region and a limit read the same frames as libsndfile would.
    part = decode(str(path), 0.25, 1.0, 0.5)
    assert part.truncated
    assert np.array_equal(part.samples, want[4000:12000])
