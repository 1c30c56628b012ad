"""Feature presets against each tower's own transformers feature extractor, on real bundled clips.

The references are the real extractors (``ClapFeatureExtractor`` with ``truncation="rand_trunc"``,
``WhisperFeatureExtractor``, ``ASTFeatureExtractor``) built with the preset's parameters; the
clips are decoded and resampled by the pipeline's own ``dataprep.audio`` functions. Measured
max abs differences (float32 output, 12 clips from 4 corpora, transformers 5.24, torch 2.13 CPU):
htsat 7.6e-6 dB (torch float64 recomputation vs the extractor's float32 numpy), whisper and
ast 0 (the extractor itself is called). Bounds asserted below leave a margin over those.
"""

from __future__ import annotations

import numpy as np
import pytest
from transformers import ASTFeatureExtractor, ClapFeatureExtractor, WhisperFeatureExtractor

from dataprep import audio
from dataprep.core.config import FeatureConfig
from dataprep.core.features import LogMel, feature_fingerprint, fingerprint_fields, make_featurizer

CORPORA = ["esc50_mini/audio", "librispeech_mini", "cremad_mini/AudioWAV", "audiocaps_mini/audio"]
AUDIO_EXT = {".wav", ".flac", ".ogg", ".mp3"}


def _clips(root, sample_rate_hz: int, per_corpus: int = 3) -> list[tuple[str, np.ndarray]]:
    out = []
    for sub in CORPORA:
        files = sorted(p for p in (root / sub).rglob("*") if p.suffix in AUDIO_EXT)[:per_corpus]
        for path in files:
            dec = audio.decode(str(path))
            wave = dec.samples.mean(axis=1).astype(np.float32)
            out.append((path.name, audio.resample(wave, dec.sample_rate_hz, sample_rate_hz)))
    assert len(out) >= 4 * per_corpus - 1, "bundled corpora missing"
    return out


def _reference(cfg: FeatureConfig):
    """The tower's own extractor, as a function wave -> [n_mels, frames] (our layout)."""
    sr = cfg.sample_rate_hz
    if cfg.preset == "htsat":
        fe = ClapFeatureExtractor(frequency_min=cfg.f_min_hz, frequency_max=cfg.f_max_hz)
        return lambda w: (
            fe(w, sampling_rate=sr, truncation="rand_trunc", return_tensors="np")["input_features"][
                0, 0
            ].T
        )
    if cfg.preset == "whisper":
        fe = WhisperFeatureExtractor(feature_size=cfg.n_mels)
        return lambda w: fe(w, sampling_rate=sr, return_tensors="np")["input_features"][0]
    fe = ASTFeatureExtractor()
    return lambda w: fe(w, sampling_rate=sr, return_tensors="np")["input_values"][0].T


# Max abs difference allowed with float32 output (measured: see module docstring).
BOUND = {"htsat": 1e-4, "whisper": 1e-6, "ast": 1e-6}
SHAPE = {"htsat": (64, 1001), "whisper": (80, 3000), "ast": (128, 1024)}


@pytest.mark.parametrize("preset", ["htsat", "whisper", "ast"])
def test_preset_equals_the_towers_extractor_on_real_clips(corpora_root, preset):
    cfg = FeatureConfig(preset=preset, dtype="float32")
    ours, ref = make_featurizer(cfg), _reference(cfg)
    worst = 0.0
    for name, wave in _clips(corpora_root, cfg.sample_rate_hz):
        got, want = ours(wave), ref(wave)
        assert got.shape == SHAPE[preset] == want.shape, name
        assert got.dtype == np.float32
        worst = max(worst, float(np.abs(got - want).max()))
    print(f"{preset}: max abs difference vs the transformers extractor = {worst:.3g}")
    assert worst <= BOUND[preset]


@pytest.mark.parametrize("preset", ["htsat", "whisper", "ast"])
def test_float16_storage_error_is_bounded(corpora_root, preset):
    """The default shard dtype is float16: the stored input then differs from the extractor by
    float16 rounding only (relative 2**-11 of the value's magnitude)."""
    cfg16 = FeatureConfig(preset=preset)
    assert cfg16.dtype == "float16"
    ref = _reference(cfg16)
    name, wave = _clips(corpora_root, cfg16.sample_rate_hz, per_corpus=1)[0]
    got, want = make_featurizer(cfg16)(wave), ref(wave)
    assert got.dtype == np.float16
    err = np.abs(got.astype(np.float32) - want)
    assert (err <= np.abs(want) * 2.0**-11 + 1e-4).all(), (name, float(err.max()))


def test_htsat_long_clip_is_cut_to_its_head_deterministically(corpora_root):
    """Over 10 s the extractor crops at a random offset; the preset takes the first 10 s, which
    equals the extractor on that head (so no random crop ever lands in a shard)."""
    cfg = FeatureConfig(preset="htsat", dtype="float32")
    waves = [w for _, w in _clips(corpora_root, 48000)]
    long = np.concatenate(waves)
    assert long.shape[0] > 480_000
    ours = make_featurizer(cfg)
    got = ours(long)
    np.testing.assert_array_equal(got, ours(long))
    assert np.abs(got - _reference(cfg)(long[:480_000])).max() <= BOUND["htsat"]


def test_very_short_clips_do_not_crash():
    for preset in ("htsat", "whisper", "ast"):
        cfg = FeatureConfig(preset=preset, dtype="float32")
        got = make_featurizer(cfg)(np.full(50, 0.1, dtype=np.float32))
        assert got.shape == SHAPE[preset] and np.isfinite(got).all()
        with pytest.raises(ValueError, match="empty"):
            make_featurizer(cfg)(np.zeros(0, dtype=np.float32))


def test_default_preset_keeps_its_bytes_and_fingerprint(corpora_root):
    """No preset: the same LogMel bytes and the same fingerprint as before presets existed
    (the value is the one shards built before this change carry)."""
    cfg = FeatureConfig()
    assert feature_fingerprint(cfg) == "fc146023b830e14e"
    assert "preset" not in fingerprint_fields(cfg)
    feat = make_featurizer(cfg)
    assert isinstance(feat, LogMel)
    _, wave = _clips(corpora_root, 16000, per_corpus=1)[0]
    assert feat(wave).tobytes() == LogMel(cfg)(wave).tobytes()


def test_fingerprint_records_the_preset():
    fps = {
        feature_fingerprint(FeatureConfig(preset=p)) for p in ("logmel", "htsat", "whisper", "ast")
    }
    assert len(fps) == 4
    fields = fingerprint_fields(FeatureConfig(preset="whisper"))
    assert fields["preset"] == "whisper" and "WhisperFeatureExtractor" in fields["algorithm"]
    assert fields["transformers"]  # recorded, not hashed (a VERSION_FIELD)


def test_preset_conflicts_are_one_clear_error():
    with pytest.raises(
        ValueError, match="sample_rate_hz=16000 conflicts with features.preset=htsat"
    ):
        FeatureConfig(preset="htsat", sample_rate_hz=16000)
    with pytest.raises(ValueError, match="multirate_hops"):  # removed key (issue 14)
        FeatureConfig(preset="ast", multirate_hops=(320,))
    # free fields keep an explicit value: Whisper large-v3 has 128 mel bins
    assert FeatureConfig(preset="whisper", n_mels=128).n_mels == 128


@pytest.mark.parametrize("preset", ["htsat", "whisper", "ast"])
def test_the_shard_builder_stores_the_extractors_output(corpora_root, preset):
    """The real SampleProcessor (the body of a shard task) on real ESC-50-layout clips: each
    sample's stored ``mel.npy`` is the tower's extractor output on the waveform the builder
    featurized (captured by wrapping the processor's own featurizer), in the shard dtype, and
    the sample records the preset's fingerprint."""
    from dataprep.core.config import CorpusConfig, DataConfig
    from dataprep.core.sample import MEL, META
    from dataprep.corpora import read_corpus
    from dataprep.process import SampleProcessor

    cfg = DataConfig.model_validate(
        {
            "features": {"preset": preset, "dtype": "float32"},
            "build": {"dedup": {"exact": False, "near": False}},
        }
    )
    refs = [
        r
        for r in read_corpus(
            CorpusConfig(name="esc", reader="esc50", root=str(corpora_root / "esc50_mini"))
        )
    ][:2]
    proc = SampleProcessor(cfg, augment=False)
    seen: list[np.ndarray] = []
    featurize = proc.logmel
    proc.logmel = lambda w: (seen.append(np.array(w, copy=True)), featurize(w))[1]
    try:
        samples = [s for ref in refs for s in proc(ref, "train").samples]
    finally:
        proc.close()
    assert len(samples) == len(seen) >= 2
    ref_fn = _reference(cfg.features)
    for sample, wave in zip(samples, seen):
        assert sample[MEL].shape == SHAPE[preset] and sample[MEL].dtype == np.float32
        assert np.abs(sample[MEL] - ref_fn(wave)).max() <= BOUND[preset]
        assert sample[META]["feature_fingerprint"] == feature_fingerprint(cfg.features)
