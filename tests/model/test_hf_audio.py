"""transformers audio towers (model.hf_audio) fed by the feature presets, on real bundled clips.

Models: TINY RANDOM ClapAudioModel (HTSAT), WhisperModel and ASTModel saved to tmp dirs by
``hf_helpers`` (random weights, real loading code). The reference for each tower is the same
transformers model called on its own feature extractor's output for the same waveforms, so the
test covers preset -> project layout -> tower -> model end to end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_helpers import tiny_ast, tiny_clap, tiny_clap_audio, tiny_whisper
from transformers import (
    ASTFeatureExtractor,
    ASTModel,
    ClapAudioModel,
    ClapFeatureExtractor,
    WhisperFeatureExtractor,
    WhisperModel,
)

from dataprep import audio
from dataprep.core.config import FeatureConfig
from dataprep.core.features import make_featurizer
from model.hf_audio import HTSATAudio, build_hf_audio, check_features
from model.hf_common import HFLoadError

BUILDERS = {"htsat": tiny_clap_audio, "whisper": tiny_whisper, "ast": tiny_ast}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_audio")
    return {k: b(root / k) for k, b in BUILDERS.items()}


def _waves(corpora_root, sample_rate_hz):
    paths = sorted((corpora_root / "esc50_mini/audio").glob("*.wav"))[:2]
    out = []
    for p in paths:
        dec = audio.decode(str(p))
        wave = dec.samples.mean(axis=1).astype(np.float32)
        out.append(audio.resample(wave, dec.sample_rate_hz, sample_rate_hz))
    return out


def _reference(kind, path, waves, sr):
    """The transformers model on its own extractor's batch: pooled [B, D]."""
    with torch.no_grad():
        if kind == "htsat":
            fe = ClapFeatureExtractor(frequency_min=50, frequency_max=14000)
            x = fe(waves, sampling_rate=sr, truncation="rand_trunc", return_tensors="pt")
            return (
                ClapAudioModel.from_pretrained(path)
                .eval()(input_features=x["input_features"])
                .pooler_output
            )
        if kind == "whisper":
            x = WhisperFeatureExtractor()(waves, sampling_rate=sr, return_tensors="pt")
            enc = WhisperModel.from_pretrained(path).eval().get_encoder()
            return enc(input_features=x["input_features"]).last_hidden_state.mean(1)
        x = ASTFeatureExtractor()(waves, sampling_rate=sr, return_tensors="pt")
        return ASTModel.from_pretrained(path).eval()(input_values=x["input_values"]).pooler_output


@pytest.mark.parametrize("kind", ["htsat", "whisper", "ast"])
def test_tower_on_preset_features_equals_the_model_on_its_extractor(corpora_root, dirs, kind):
    fcfg = FeatureConfig(preset=kind, dtype="float32")
    tower = build_hf_audio(kind, dirs[kind]).eval()
    check_features(tower, fcfg)
    waves = _waves(corpora_root, fcfg.sample_rate_hz)
    feat = make_featurizer(fcfg)
    mel = torch.from_numpy(np.stack([feat(w) for w in waves]))
    assert mel.shape[1:] == (tower.n_mels, tower.frames)
    with torch.no_grad():
        pooled, frames, valid = tower(mel, return_frames=True)
        # a loader padding the batch beyond the preset's length changes nothing
        padded = torch.cat([mel, torch.full_like(mel[:, :, :7], 3.0)], dim=2)
        torch.testing.assert_close(tower(padded), pooled)
    want = _reference(kind, dirs[kind], waves, fcfg.sample_rate_hz)
    err = float((pooled - want).abs().max())
    print(f"{kind}: tower(preset) vs model(extractor) max abs diff {err:.2e}")
    assert err <= 1e-4
    assert pooled.shape == (2, tower.out_dim)
    assert frames.shape[0] == 2 and frames.shape[2] == tower.out_dim and valid.all()


def test_a_preset_that_does_not_match_the_tower_is_refused(dirs):
    tower = build_hf_audio("htsat", dirs["htsat"])
    with pytest.raises(HFLoadError, match="preset: tower needs 'htsat', features have 'logmel'"):
        check_features(tower, FeatureConfig())
    with pytest.raises(HFLoadError, match="n_mels: tower needs 80, features have 128"):
        check_features(
            build_hf_audio("whisper", dirs["whisper"]), FeatureConfig(preset="whisper", n_mels=128)
        )
    with pytest.raises(ValueError, match=r"needs mel \[B, 64, 1001\]"):
        tower(torch.zeros(1, 64, 500))


def test_wrong_model_directory_is_one_clear_error(dirs, tmp_path):
    with pytest.raises(HFLoadError, match="audio.kind=whisper needs a Whisper model directory"):
        build_hf_audio("whisper", dirs["ast"])
    with pytest.raises(HFLoadError, match="audio.kind=htsat needs a ClapModel or ClapAudioModel"):
        build_hf_audio("htsat", dirs["whisper"])
    with pytest.raises(HFLoadError, match="not a transformers model directory"):
        build_hf_audio("ast", tmp_path)


def test_htsat_from_a_whole_clap_directory_keeps_batchnorm_frozen(tmp_path):
    """TINY RANDOM ClapModel dir: the HTSAT tower takes its audio model; in train mode the
    input BatchNorm still uses (and keeps) its running statistics, while dropout is active."""
    tower = HTSATAudio(tiny_clap(tmp_path / "clap"), dropout=0.2)
    bn = tower.model.audio_encoder.batch_norm
    before = bn.running_mean.clone()
    tower.train()
    assert tower.training and not bn.training
    mel = torch.randn(2, 64, 1001) * 10 - 40
    torch.manual_seed(1)
    a = tower(mel)
    torch.manual_seed(1)
    b = tower(mel)
    c = tower(mel)
    torch.testing.assert_close(a, b)  # same RNG state, same dropout masks
    assert (a - c).abs().max() > 1e-6  # dropout on
    assert torch.equal(bn.running_mean, before)
