"""Audio stage on real audio: every codec/rate/channel layout, loudness, trim, segments, limits."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
import torch

from dataprep.audio import AudioError, decode, load_segments, segment_starts
from dataprep.core.config import AudioConfig
from dataprep.core.sample import SampleRef

_spec = importlib.util.spec_from_file_location(
    "layout_builders", Path(__file__).resolve().parents[1] / "fixtures" / "layouts" / "builders.py"
)
layouts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(layouts)

SR = 16000


@pytest.fixture(scope="session")
def corpora(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("corpora_root")


@pytest.fixture(scope="session")
def long_clip(corpora: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return layouts.long_clip(corpora, tmp_path_factory.getbasetemp())


def ref_for(path: Path | str, **kw) -> SampleRef:
    return SampleRef(corpus="t", source_id=Path(path).name, audio=str(path), **kw)


def _nemo_rows(corpora: Path) -> list[dict]:
    root = corpora / "nemo_manifest_mini"
    return [json.loads(x) for m in sorted(root.glob("*.jsonl")) for x in m.read_text().splitlines()]


def test_every_format_decodes_and_normalizes(corpora: Path) -> None:
    """wav s16/s24/f32/µ-law, flac, ogg, mp3; 8-48 kHz; mono/stereo -> float32 mono 16 kHz."""
    cfg = AudioConfig()
    seen = set()
    for row in _nemo_rows(corpora):
        path = corpora / "nemo_manifest_mini" / row["audio_filepath"]
        info = sf.info(path)
        seen.add((info.format, info.subtype, info.samplerate, info.channels))
        segs = load_segments(ref_for(path), cfg, SR)
        assert len(segs) == 1
        s = segs[0]
        assert s.wave.dtype == np.float32 and s.wave.ndim == 1 and np.isfinite(s.wave).all()
        assert np.abs(s.wave).max() <= cfg.peak_limit + 1e-6
        # Decoded duration is measured, and the resampled length matches it.
        assert s.stats["decoded_duration_s"] == pytest.approx(
            info.frames / info.samplerate, abs=0.06
        )
        assert s.wave.size <= round(s.stats["decoded_duration_s"] * SR) + 1
        assert s.stats["source_sample_rate_hz"] == info.samplerate
        assert all(math.isfinite(v) for v in s.stats.values())
    assert len({f for f, *_ in seen}) >= 4 and len({sr for *_, sr, _ in seen}) >= 4
    assert {c for *_, c in seen} == {1, 2}


def test_loudness_target_and_gain_invariance(corpora: Path, tmp_path: Path) -> None:
    """Copies at -6 and -20 dB come out at the target loudness with (almost) the same samples."""
    src = sorted((corpora / "esc50_mini" / "audio").glob("*.wav"))[3]
    x, sr = sf.read(src, dtype="float32")
    cfg = AudioConfig(target_lufs=-23.0, trim_silence_db=None)
    outs = []
    for gain_db in (0.0, -6.0, -20.0):
        p = tmp_path / f"g{int(-gain_db)}.wav"
        sf.write(p, x * np.float32(10 ** (gain_db / 20)), sr, subtype="FLOAT")
        seg = load_segments(ref_for(p), cfg, SR)[0]
        outs.append(seg)
        assert seg.stats["lufs"] == pytest.approx(outs[0].stats["lufs"] + gain_db, abs=0.1)
    meter = pyloudnorm.Meter(SR)
    for seg in outs:
        measured = meter.integrated_loudness(seg.wave.astype(np.float64))
        limited = np.abs(seg.wave).max() >= cfg.peak_limit - 1e-3
        assert measured == pytest.approx(-23.0, abs=0.2) or (limited and measured < -23.0)
        np.testing.assert_allclose(seg.wave, outs[0].wave, atol=2e-4)


def test_peak_limit_wins_on_clipped_audio(corpora: Path) -> None:
    seg = load_segments(
        ref_for(corpora / "bad_inputs" / "clipped.wav"), AudioConfig(target_lufs=-10.0), SR
    )[0]
    assert np.abs(seg.wave).max() <= 0.99 + 1e-6
    # The clip ratio is measured here; the clipping flag is the filters' call (clip_flag_ratio).
    assert seg.stats["clip_ratio"] > 0.01 and "clipping" not in seg.flags
    assert seg.stats["source_peak"] == pytest.approx(1.0, abs=1e-3)


def test_resample_and_downmix_against_soxr(corpora: Path) -> None:
    """A 44.1 kHz stereo clip: our mono 16 kHz equals downmix + soxr (HQ) resample by hand."""
    import soxr

    clip = next(
        p
        for p in sorted((corpora / "audiocaps_mini" / "audio" / "train").glob("*.ogg"))
        if sf.info(p).channels == 2
    )
    x, sr = sf.read(clip, dtype="float32", always_2d=True)
    want = soxr.resample(x.mean(axis=1), sr, SR, quality="HQ")
    seg = load_segments(
        ref_for(clip), AudioConfig(target_lufs=None, peak_limit=1.0, trim_silence_db=None), SR
    )[0]
    ratio = float(np.abs(seg.wave).max() / np.abs(want).max())
    np.testing.assert_allclose(seg.wave, want * ratio, atol=1e-5)


def test_trim_silence_reports_offsets(corpora: Path, tmp_path: Path) -> None:
    src = min((corpora / "esc50_mini" / "audio").glob("*.wav"))
    x, sr = sf.read(src, dtype="float32")
    lead, tail = 1.25, 0.8
    padded = np.concatenate(
        [np.zeros(int(lead * sr), np.float32), x, np.zeros(int(tail * sr), np.float32)]
    )
    sf.write(tmp_path / "pad.wav", padded, sr)
    plain = load_segments(ref_for(src), AudioConfig(), SR)[0]
    seg = load_segments(ref_for(tmp_path / "pad.wav"), AudioConfig(), SR)[0]
    assert seg.start_s == pytest.approx(lead + plain.start_s, abs=0.03)
    assert seg.duration_s == pytest.approx(plain.duration_s, abs=0.03)
    untrimmed = load_segments(ref_for(tmp_path / "pad.wav"), AudioConfig(trim_silence_db=None), SR)[
        0
    ]
    assert untrimmed.start_s == 0 and untrimmed.duration_s == pytest.approx(
        lead + tail + x.size / sr, abs=1e-3
    )


def test_segment_starts_cover_without_stub() -> None:
    assert segment_starts(7.0, 10.0, 0.0) == [0.0]
    starts = segment_starts(25.0, 10.0, 2.0)
    assert (
        starts[0] == 0
        and starts[-1] == 15.0
        and all(b - a <= 8.0 for a, b in itertools.pairwise(starts))
    )
    with pytest.raises(ValueError):
        segment_starts(25.0, 10.0, 10.0)


def test_long_source_is_segmented_and_bounded(long_clip: Path) -> None:
    cfg = AudioConfig(max_segment_s=10.0, segment_overlap_s=0.0, max_segments_per_source=64)
    segs = load_segments(ref_for(long_clip), cfg, SR)
    assert 28 <= len(segs) <= 30 and all(s.wave.size <= 10 * SR for s in segs)
    assert all(b.start_s >= a.start_s + 10.0 - 1e-3 for a, b in itertools.pairwise(segs))
    assert segs[-1].end_s <= 300.0 + 1e-3 and "source_cropped" not in segs[0].flags
    # A small cap decodes only what it may keep: bounded memory per input, flagged.
    capped = load_segments(
        ref_for(long_clip), AudioConfig(max_segments_per_source=3, segment_overlap_s=1.0), SR
    )
    assert len(capped) == 3 and capped[0].stats["decoded_duration_s"] <= 10 + 2 * 9 + 1e-6
    assert "source_cropped" in capped[0].flags and capped[0].stats[
        "source_duration_s"
    ] == pytest.approx(300, abs=0.1)
    assert capped[1].start_s - capped[0].start_s == pytest.approx(9.0, abs=1e-3)


def test_region_from_corpus_timestamps(long_clip: Path) -> None:
    ref = ref_for(long_clip, start_s=42.0, end_s=46.5)
    seg = load_segments(ref, AudioConfig(trim_silence_db=None), SR)
    assert (
        len(seg) == 1
        and seg[0].start_s == pytest.approx(42.0)
        and seg[0].end_s == pytest.approx(46.5)
    )
    with pytest.raises(AudioError) as err:
        load_segments(ref_for(long_clip, start_s=5.0, end_s=4.0), AudioConfig(), SR)
    assert err.value.reason == "bad_region"
    with pytest.raises(AudioError) as err:
        load_segments(ref_for(long_clip, start_s=400.0), AudioConfig(), SR)
    assert err.value.reason == "empty_audio"


def test_ffmpeg_fallback_for_aac_and_webm(corpora: Path, tmp_path: Path) -> None:
    """Containers libsndfile cannot open go through torchcodec/FFmpeg with the same result."""
    from torchcodec.encoders import AudioEncoder

    src = sorted((corpora / "esc50_mini" / "audio").glob("*.wav"))[1]
    x, sr = sf.read(src, dtype="float32")
    cfg = AudioConfig(trim_silence_db=None)
    ref_seg = load_segments(ref_for(src), cfg, SR)[0]
    for fmt in ("mp4", "webm"):
        path = tmp_path / f"clip.{fmt}"
        path.write_bytes(
            AudioEncoder(torch.from_numpy(x)[None], sample_rate=sr)
            .to_tensor(format=fmt)
            .numpy()
            .tobytes()
        )
        with pytest.raises(sf.LibsndfileError):
            sf.info(path)
        assert decode(str(path)).decoder == "ffmpeg"
        seg = load_segments(ref_for(path), cfg, SR)[0]
        n = min(seg.wave.size, ref_seg.wave.size)
        lag = int(
            np.argmax(np.correlate(seg.wave[:n], ref_seg.wave[: SR // 2], "valid")[: SR // 4])
        )
        corr = np.corrcoef(seg.wave[lag : lag + n - SR // 4], ref_seg.wave[: n - SR // 4])[0, 1]
        assert corr > 0.9, (fmt, corr)
        part = decode(str(path), 1.0, 2.0)
        assert part.samples.shape[0] == pytest.approx(part.sample_rate_hz, rel=0.02)


def test_content_not_extension_decides(corpora: Path) -> None:
    dec = decode(str(corpora / "bad_inputs" / "wrong_extension_is_flac.mp3"))
    assert dec.decoder == "soundfile" and dec.samples.shape[0] > 0


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_loudness_equals_pyloudnorm(corpora: Path, rate: int) -> None:
    """Our vectorized BS.1770 meter (one fourth-order K-weighting pass, blocks from 100-ms
    steps) gives pyloudnorm's integrated loudness on real clips, at the rates features use,
    including lengths whose last step is just under / at half full (pyloudnorm rounds)."""
    from dataprep.core.waveform import loudness_lufs, resample

    clips = sorted((corpora / "esc50_mini" / "audio").glob("*.wav"))[:3]
    clips += sorted((corpora / "librispeech_mini").rglob("*.flac"))[:2]
    meter = pyloudnorm.Meter(rate)
    step = rate // 10
    for path in clips:
        x, sr = sf.read(path, dtype="float32", always_2d=True)
        wave = resample(x.mean(axis=1), sr, rate)
        for n in (len(wave), 4 * step + step // 2 - 1, 4 * step + step // 2, 7 * step + 3):
            w = wave[:n]
            if len(w) < n:
                continue
            ref = meter.integrated_loudness(w.astype(np.float64))
            got = loudness_lufs(w, rate)
            if math.isinf(ref):  # all blocks gated: pyloudnorm says -inf, we say the floor
                assert got <= -70.0
            else:
                assert got == pytest.approx(ref, abs=1e-4), (path.name, n)
