"""MGA-CLAP's locality-aware block and frame-level similarity (model.layers, model.frames).

Models are TINY RANDOM ones built in the test (patch transformer, sentencepiece text tower
trained on a few sentences); audio is a bundled ESC-50 clip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from model_helpers import N_MELS, tiny_config

from dataprep.core.config import AudioConfig, ConfigError, FeatureConfig
from model import CLAP
from model.audio_encoder import AudioEncoder
from model.clap import build_model
from model.config import AudioEncoderConfig, ExperimentConfig, load_config
from model.inference import Preprocessing
from model.layers import Block

REPO = Path(__file__).resolve().parents[2]


def test_value_path_does_not_mix_tokens_while_the_block_does():
    """Perturbing token j leaves every other token's locality-aware output unchanged (and
    changes token j's); the ordinary block's attention carries the change to token i."""
    torch.manual_seed(0)
    block = Block(16, 2, 4.0, 0.0).eval()
    x = torch.randn(2, 7, 16)
    y = x.clone()
    y[:, 4] += torch.randn(2, 16)
    v_x, v_y = block.value_path(x), block.value_path(y)
    others = [i for i in range(7) if i != 4]
    torch.testing.assert_close(v_x[:, others], v_y[:, others], rtol=0, atol=0)
    assert (v_x[:, 4] - v_y[:, 4]).abs().max() > 1e-3
    b_x, b_y = block(x), block(y)
    assert (b_x[:, 0] - b_y[:, 0]).abs().max() > 1e-4  # the clip path mixes
    # per token: the value rows of qkv, then the output projection; no MLP
    d = 16
    w, bias = block.attn.qkv.weight[2 * d :], block.attn.qkv.bias[2 * d :]
    want = x + block.attn.proj(block.norm1(x) @ w.T + bias)
    torch.testing.assert_close(v_x, want)


def _pair(**kw):
    torch.manual_seed(0)
    off = AudioEncoder(tiny_config(band_window=None, **kw).audio, N_MELS).eval()
    on = AudioEncoder(tiny_config(band_window=None, locality_blocks=1, **kw).audio, N_MELS).eval()
    on.load_state_dict(off.state_dict())  # the block adds no parameters
    return off, on


@pytest.mark.parametrize("pooling", ["cls", "attentive"])
def test_locality_blocks_change_the_frames_not_the_clip(pooling):
    off, on = _pair(pooling=pooling, depth=2)
    mel = torch.randn(2, N_MELS, 40)
    lengths = torch.tensor([40, 23])
    p0, f0, m0 = off(mel, lengths, return_frames=True)
    p1, f1, m1 = on(mel, lengths, return_frames=True)
    torch.testing.assert_close(p0, p1)  # the clip embedding takes the main path
    torch.testing.assert_close(on(mel, lengths), p1)
    assert torch.equal(m0, m1) and f1.shape == f0.shape == (2, 10, 32)
    assert (f0 - f1).abs().max() > 1e-3  # the frames take the value path


def test_with_all_blocks_local_a_frame_sees_only_its_own_patch():
    """locality_blocks == depth: the frame path never mixes, so changing the audio of one time
    patch changes that frame only; the pooled clip feature changes too (it mixes)."""
    torch.manual_seed(0)
    enc = AudioEncoder(
        tiny_config(band_window=None, depth=2, locality_blocks=2, multirate=()).audio, N_MELS
    ).eval()
    mel = torch.randn(1, N_MELS, 40)
    changed = mel.clone()
    changed[:, :, 8:12] += 2.0  # time patch 2 (patch_time 4)
    p0, f0, _ = enc(mel, return_frames=True)
    p1, f1, _ = enc(changed, return_frames=True)
    others = [t for t in range(10) if t != 2]
    torch.testing.assert_close(f0[:, others], f1[:, others])
    assert (f0[:, 2] - f1[:, 2]).abs().max() > 1e-3
    assert (p0 - p1).abs().max() > 1e-4


def test_config_is_typed_checked_and_renamed():
    cfg = load_config(None, ["model.audio.locality_blocks=2", "model.audio.depth=2"])
    assert cfg.model.audio.locality_blocks == 2
    with pytest.raises(ConfigError, match="locality_blocks=3 exceeds audio.depth=2"):
        load_config(None, ["model.audio.locality_blocks=3", "model.audio.depth=2"])
    with pytest.raises(ConfigError, match="locality_blocks"):
        load_config(None, ["model.audio.locality_blocks=-1"])
    with pytest.raises(ValueError, match="locality_blocks needs audio.kind=patch"):
        AudioEncoderConfig(kind="htsat", path="x", locality_blocks=1)
    # exports written before the rename: local_window was banded attention all along
    old = ExperimentConfig.model_validate({"model": {"audio": {"local_window": 3}}})
    assert old.model.audio.band_window == 3
    assert "model.audio.locality_blocks: int = 0" in _help_reference()


def _help_reference() -> str:
    from dataprep.core.configfile import config_reference

    return config_reference(ExperimentConfig)


def _api(codebook: int, locality: int, tmp_path: Path) -> CLAP:
    """A TINY RANDOM polyclap model wrapped as the API wraps an export."""
    from model.config import ModelConfig, TextEncoderConfig
    from model.tokenizer import load_tokenizer, make_tokenize, train_tokenizer

    torch.manual_seed(0)
    text = TextEncoderConfig(vocab_size=300, dim=32, depth=1, heads=2, max_len=16)
    cfg = ModelConfig(
        audio=AudioEncoderConfig(
            dim=32, depth=2, heads=2, max_frames=256, locality_blocks=locality
        ),
        text=text,
        embed_dim=16,
        loss={"codebook_size": codebook},
    )
    words = ["a dog barks", "rain falls on a roof", "a siren wails", "church bells ring"] * 8
    train_tokenizer(words, tmp_path / "tok.model", vocab_size=300)
    tok = load_tokenizer(text, tmp_path / "tok.model")
    pre = Preprocessing(FeatureConfig(), AudioConfig(), 10.0, 0.0, 256)
    return CLAP(build_model(cfg, 64), pre, make_tokenize(tok, text), device="cpu")


@pytest.mark.parametrize("codebook", [0, 8])
def test_frame_similarity_shapes_and_time_axis(codebook, corpora_root, tmp_path):
    m = _api(codebook, 1, tmp_path)
    clip = corpora_root / "esc50_mini" / "audio" / "1-248616-A-0.wav"  # 3.0 s
    texts = ["a dog barks", "rain", "a siren wails"]
    fs = m.frame_similarity(str(clip), texts)
    # 301 log-mel frames in two 256-frame windows (0-2.56 s, 0.45-3.0 s), 16-frame patches of
    # 10 ms: 0.16 s per frame, the second window's frames kept from where the first ends
    assert fs.texts == tuple(texts) and fs.scores.shape == (len(fs.starts_s), 3)
    np.testing.assert_allclose(np.diff(fs.starts_s)[:15], 0.16, atol=1e-6)
    assert fs.starts_s[0] == 0.0 and fs.ends_s[-1] == pytest.approx(3.0)
    assert np.all(fs.starts_s[1:] >= fs.ends_s[:-1] - 1e-6)  # no frame twice
    assert 18 <= len(fs.starts_s) <= 20
    assert np.all(np.abs(fs.scores) <= 1.0 + 1e-5)
    # cosine of unit vectors: the frame and text embeddings the scores come from
    series = m.frame_embeddings([clip])[0]
    np.testing.assert_allclose(np.linalg.norm(series.embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        series.embeddings @ m.frame_text_embeddings(texts).T, fs.scores, atol=1e-5
    )
    # a file equals its decoded array; several inputs give a list, a bad one None
    x, sr = sf.read(str(clip), dtype="float32")
    np.testing.assert_allclose(m.frame_similarity(x, texts, sample_rate=sr).scores, fs.scores)
    bad = corpora_root / "bad_inputs" / "not_audio.wav"
    both = m.frame_similarity([clip, bad], texts)
    assert both[1] is None and both[0].scores.shape == fs.scores.shape
