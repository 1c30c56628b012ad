"""Whole-model import of a transformers ClapModel directory (model.hf_import).

Model: a TINY RANDOM ClapModel (1-layer RoBERTa text, 4x1-block HTSAT, projection 32) saved to a
tmp dir by ``hf_helpers.tiny_clap`` with a byte-level BPE tokenizer trained on the bundled
captions. Audio: real bundled clips through the htsat feature preset.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hf_helpers import tiny_clap
from transformers import ClapFeatureExtractor, ClapModel

from dataprep import audio
from dataprep.core.config import FeatureConfig
from dataprep.core.features import make_featurizer
from model.hf_common import HFLoadError
from model.hf_import import clap_model_config, import_clap
from model.hf_text import HFTokenizer

TEXTS = ["A dog barks several times and then a man speaks", "rain", "a bell rings twice"]


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return tiny_clap(tmp_path_factory.mktemp("clap") / "tiny")


def _waves(corpora_root):
    out = []
    for sub, n in (("esc50_mini/audio", 2), ("audiocaps_mini/audio", 1)):
        paths = sorted(
            p
            for p in (corpora_root / sub).rglob("*")
            if p.suffix in {".wav", ".flac", ".ogg", ".mp3"}
        )
        for p in paths[:n]:
            dec = audio.decode(str(p))
            wave = dec.samples.mean(axis=1).astype(np.float32)
            out.append(audio.resample(wave, dec.sample_rate_hz, 48000))
    assert len(out) == 3
    return out


def test_imported_embeddings_equal_clapmodel_features(corpora_root, clap_dir):
    model, report = import_clap(clap_dir)
    model.eval()
    assert report.missing == [] and report.unexpected == [] and report.dropped == ["logit_scale_t"]
    ref = ClapModel.from_pretrained(str(clap_dir)).eval()
    waves = _waves(corpora_root)
    fcfg = FeatureConfig(preset="htsat", dtype="float32")
    mel = torch.from_numpy(np.stack([make_featurizer(fcfg)(w) for w in waves]))
    fe = ClapFeatureExtractor(frequency_min=50, frequency_max=14000)
    x = fe(waves, sampling_rate=48000, truncation="rand_trunc", return_tensors="pt")
    ids, mask = HFTokenizer(clap_dir).encode_batch(TEXTS, 32)
    with torch.no_grad():
        a_ours, t_ours = model.encode_audio(mel), model.encode_text(ids, mask)
        a_ref = ref.get_audio_features(input_features=x["input_features"]).pooler_output
        t_ref = ref.get_text_features(input_ids=ids, attention_mask=mask.long()).pooler_output
        scale = model.logit_scale()
    a_err, t_err = float((a_ours - a_ref).abs().max()), float((t_ours - t_ref).abs().max())
    print(f"ClapModel import: audio max abs diff {a_err:.2e}, text {t_err:.2e}")
    assert a_err <= 1e-4 and t_err <= 1e-4
    assert a_ours.shape == (3, 32) and t_ours.shape == (3, 32)
    torch.testing.assert_close(scale, ref.logit_scale_a.exp())


def test_import_config_and_strictness(clap_dir, tmp_path):
    cfg = clap_model_config(clap_dir)
    assert (cfg.audio.kind, cfg.text.kind, cfg.text.pooling, cfg.projection, cfg.embed_dim) == (
        "htsat",
        "hf",
        "pooler",
        "mlp",
        32,
    )
    # A checkpoint with a key polyclap has no home for: strict import lists it
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "extra"
    shutil.copytree(clap_dir, bad)
    state = load_file(str(bad / "model.safetensors"))
    state["something_new.weight"] = torch.zeros(2)
    del state["audio_projection.linear2.bias"]
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(HFLoadError, match="missing.*audio_proj.linear2.bias.*something_new"):
        import_clap(bad)
    _, report = import_clap(bad, strict=False)
    assert report.missing == ["audio_proj.linear2.bias"]
    assert report.unexpected == ["something_new.weight"]
    # A tower weight missing: the tower loader itself refuses (transformers would init it
    # at random and only log that)
    del state["text_model.pooler.dense.bias"]
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(HFLoadError, match=r"does not match ClapModel: missing \['text_model"):
        import_clap(bad, strict=False)


def test_not_a_clap_directory_is_one_clear_error(tmp_path, clap_dir):
    with pytest.raises(HFLoadError, match="not a transformers model directory"):
        import_clap(tmp_path)
    other = tmp_path / "audio_only"
    other.mkdir()
    cfg = json.loads((clap_dir / "config.json").read_text())
    (other / "config.json").write_text(
        json.dumps({**cfg["audio_config"], "model_type": "clap_audio_model"})
    )
    with pytest.raises(HFLoadError, match="not a transformers ClapModel directory"):
        import_clap(other)


def test_config_errors_name_the_key(clap_dir):
    from pydantic import ValidationError

    from model.clap import build_model
    from model.config import AudioEncoderConfig, ModelConfig, TextEncoderConfig

    with pytest.raises(ValidationError, match="audio.kind=htsat needs audio.path"):
        AudioEncoderConfig(kind="htsat")
    with pytest.raises(ValidationError, match="text.kind=hf needs text.path"):
        TextEncoderConfig(kind="hf")
    with pytest.raises(ValidationError, match="text.pooling=last needs text.kind=hf"):
        TextEncoderConfig(pooling="last")
    assert TextEncoderConfig(kind="hf", path="x").pooling == "auto"
    cfg = clap_model_config(clap_dir)
    short = cfg.model_copy(update={"audio": cfg.audio.model_copy(update={"max_frames": 500})})
    with pytest.raises(HFLoadError, match="audio.max_frames=500 crops below"):
        build_model(short, 64)
    with pytest.raises(HFLoadError, match="reads 64 mel bins, the features have 80"):
        build_model(cfg, 80)
    assert isinstance(ModelConfig().projection, str)


def test_flops_are_counted_for_transformers_towers(clap_dir):
    """The MFU column's FLOPs: counted by torch for HF towers; on the project's own towers the
    count agrees with the analytic formula (measured 0.93x on tiny_config)."""
    from model_helpers import N_MELS, tiny_config

    from dataprep.core.config import FeatureConfig
    from model import training as tr
    from model.clap import build_model
    from model.config import ExperimentConfig

    cfg = ExperimentConfig(features=FeatureConfig(n_mels=N_MELS), model=tiny_config())
    ours = tr.measured_flops_per_sample(
        build_model(cfg.model, N_MELS), N_MELS, cfg.model.audio.max_frames, cfg.model.text.max_len
    )
    assert 0.5 < ours / tr.flops_per_sample(cfg) < 2.0
    model, _ = import_clap(clap_dir)
    model.train()
    hf = tr.measured_flops_per_sample(model, 64, 1001, 16)
    assert hf > 1e8 and model.training  # HTSAT on 1001 frames; the mode is restored
