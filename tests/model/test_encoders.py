"""Audio / text towers and the CLAP wrapper: shapes, masks, options, offline MiniLM."""

from __future__ import annotations

import math
import os

import pytest
import torch
from model_helpers import N_MELS, make_batch, tiny_config

from model.audio_encoder import AudioEncoder, spec_augment
from model.clap import build_model
from model.config import SpecAugmentConfig, TextEncoderConfig

VARIANTS = [
    {"pooling": "cls", "positions": "learned", "multirate": (), "band_window": None},
    {"pooling": "mean", "positions": "sinusoidal", "multirate": (2,), "band_window": None},
    {"pooling": "attentive", "positions": "learned", "multirate": (2, 4), "band_window": 1},
    # CALM linearized time patches: one patch spans all mel bins and k frames.
    {
        "pooling": "cls",
        "positions": "sinusoidal",
        "patch_freq": N_MELS,
        "patch_time": 2,
        "multirate": (3,),
        "band_window": 2,
    },
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v['pooling']}-{v['positions']}")
def test_audio_padding_does_not_change_the_embedding(variant):
    """Eval mode: extra padding (any content, any length) beyond mel_lengths is invisible."""
    torch.manual_seed(0)
    enc = AudioEncoder(tiny_config(**variant).audio, N_MELS).eval()
    mel = torch.randn(3, N_MELS, 30)
    lengths = torch.tensor([30, 17, 9])
    out = enc(mel, lengths)
    padded = torch.cat([mel, 5 * torch.randn(3, N_MELS, 22)], dim=2)
    padded[1, :, 17:] = 7.0
    padded[2, :, 9:] = -3.0
    torch.testing.assert_close(enc(padded, lengths), out, atol=1e-5, rtol=1e-5)
    # ...while the content inside the clip does matter.
    changed = mel.clone()
    changed[2, :, :4] += 1.0
    assert (enc(changed, lengths)[2] - out[2]).abs().max() > 1e-4
    assert out.shape == (3, 32)


def test_patch_grid_and_calm_time_patches():
    enc = AudioEncoder(tiny_config(patch_freq=N_MELS, patch_time=4).audio, N_MELS)
    assert enc.freq_patches == 1
    enc = AudioEncoder(tiny_config(patch_freq=5, patch_time=4).audio, N_MELS)
    assert enc.freq_patches == math.ceil(N_MELS / 5)  # the mel axis is padded to whole patches
    enc.eval()(torch.randn(2, N_MELS, 13))  # frames not a multiple of patch_time
    with pytest.raises(ValueError, match="mel must be"):
        enc(torch.randn(2, N_MELS + 1, 13))


def test_band_window_changes_the_last_block_only_when_set():
    torch.manual_seed(0)
    a = AudioEncoder(tiny_config(band_window=None).audio, N_MELS).eval()
    b = AudioEncoder(tiny_config(band_window=1).audio, N_MELS).eval()
    b.load_state_dict(a.state_dict())
    mel = torch.randn(2, N_MELS, 40)
    assert (a(mel) - b(mel)).abs().max() > 1e-5
    mask = b._local_mask(5, torch.device("cpu"))
    assert mask.shape == (5 * b.freq_patches,) * 2
    assert not mask[0, -1] and mask[0, 0]


def test_specaugment_draws_from_torch_rng_and_respects_lengths():
    cfg = SpecAugmentConfig(freq_mask=4, time_mask=10, num_freq_masks=2, num_time_masks=2)
    mel = torch.randn(4, N_MELS, 50)
    lengths = torch.tensor([50, 30, 10, 1])
    torch.manual_seed(3)
    a = spec_augment(mel, lengths, cfg)
    torch.manual_seed(3)
    b = spec_augment(mel, lengths, cfg)
    assert torch.equal(a, b)  # replaying the torch RNG replays the masks
    assert not torch.equal(a, mel)
    time_only = cfg.model_copy(update={"num_freq_masks": 0})
    c = spec_augment(mel, lengths, time_only)
    assert torch.equal(c[1, :, 30:], mel[1, :, 30:])  # time masks stay inside the clip
    assert torch.equal(c[2, :, 10:], mel[2, :, 10:])
    assert not torch.equal(c[:, :, :30], mel[:, :, :30])


def test_specaugment_and_dropout_only_in_training():
    torch.manual_seed(0)
    model = build_model(tiny_config(), N_MELS)
    batch = make_batch(3)
    model.eval()
    e1 = model.encode_audio(batch["mel"], batch["mel_lengths"])
    assert torch.equal(e1, model.encode_audio(batch["mel"], batch["mel_lengths"]))
    model.train()
    torch.manual_seed(1)
    t1 = model.encode_audio(batch["mel"], batch["mel_lengths"])
    torch.manual_seed(1)
    t2 = model.encode_audio(batch["mel"], batch["mel_lengths"])
    assert torch.equal(t1, t2) and not torch.allclose(t1, e1)


def test_clap_outputs_normalized_and_scale_clamped():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_model(cfg, N_MELS).eval()
    batch = make_batch(4)
    out = model(**{k: batch[k] for k in ("mel", "mel_lengths", "ids", "mask")})
    for key in ("audio_emb", "text_emb"):
        assert out[key].shape == (4, cfg.embed_dim)
        torch.testing.assert_close(out[key].norm(dim=-1), torch.ones(4))
    assert out["audio_codes"].shape == out["text_codes"].shape == (4, cfg.embed_dim)
    assert out["logit_scale"].dim() == 0
    assert math.isclose(out["logit_scale"].item(), 1 / cfg.init_temperature, rel_tol=1e-5)
    with torch.no_grad():
        model.log_scale.fill_(10.0)
    assert math.isclose(model.logit_scale().item(), cfg.max_logit_scale, rel_tol=1e-5)
    torch.testing.assert_close(model.encode_text(batch["ids"], batch["mask"]), out["text_emb"])


def test_text_padding_is_masked():
    torch.manual_seed(0)
    model = build_model(tiny_config(), N_MELS).eval()
    ids = torch.randint(0, 100, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[:, 6:] = 0
    base = model.encode_text(ids, mask)
    ids2 = ids.clone()
    ids2[:, 6:] = 3
    torch.testing.assert_close(model.encode_text(ids2, mask), base)
    with pytest.raises(ValueError, match="out of range"):
        model.encode_text(ids + 1000, mask)


@pytest.mark.parametrize("freeze", [True, False])
def test_minilm_text_tower_offline(freeze, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from model.text_encoder import minilm_tokenizer

    cfg = tiny_config()
    cfg = cfg.model_copy(update={"text": TextEncoderConfig(kind="minilm", freeze=freeze)})
    model = build_model(cfg, N_MELS).train()
    assert model.uses_own_tokenizer
    tok = minilm_tokenizer()
    enc = tok(
        ["a dog barks", "rain on a tin roof", "un perro ladra"],
        padding="max_length",
        truncation=True,
        max_length=16,
        return_tensors="pt",
    )
    emb = model.encode_text(enc["input_ids"], enc["attention_mask"])
    assert emb.shape == (3, cfg.embed_dim)
    emb.sum().backward()
    bert_grads = [p.grad for p in model.text.impl.bert.parameters()]
    assert all(g is None for g in bert_grads) == freeze
    assert model.text_proj.weight.grad is not None
    if freeze:
        assert not model.text.impl.bert.training  # frozen tower: no dropout
    # The pretrained tower is meaningful: paraphrases are closer than unrelated text.
    model.eval()
    enc = tok(
        ["a dog barks loudly", "a dog is barking", "stock market prices fell"],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        h = model.text(enc["input_ids"], enc["attention_mask"])
    h = torch.nn.functional.normalize(h, dim=-1)
    assert h[0] @ h[1] > h[0] @ h[2]
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_calm_alignment_into_the_frozen_minilm_space(monkeypatch):
    """text.project=false: the text embedding IS MiniLM's sentence embedding (normalized)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from model.text_encoder import minilm_tokenizer

    base = tiny_config()
    base = base.model_copy(update={"loss": base.loss.model_copy(update={"codebook_size": 0})})
    text = TextEncoderConfig(kind="minilm", freeze=True, project=False)
    with pytest.raises(ValueError, match="embed_dim"):
        build_model(base.model_copy(update={"text": text}), N_MELS)
    model = build_model(base.model_copy(update={"text": text, "embed_dim": 384}), N_MELS).eval()
    enc = minilm_tokenizer()(["a bell rings twice"], return_tensors="pt")
    with torch.no_grad():
        emb = model.encode_text(enc["input_ids"], enc["attention_mask"])
        raw = model.text(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(emb, torch.nn.functional.normalize(raw, dim=-1))
    assert not any(p.requires_grad for p in model.text.parameters())
    assert model.audio_proj.weight.shape == (384, 32)


def test_sparsemax_is_a_sparse_distribution_with_exact_gradient():
    from model.clap import sparsemax

    z = torch.tensor([[2.0, 1.5, -1.0, 0.1], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    p = sparsemax(z)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, dtype=torch.float64))
    assert (p[0] == 0).sum() >= 2 and torch.allclose(p[1], torch.full((4,), 0.25, dtype=p.dtype))
    z = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sparsemax, (z,))


def test_codebook_uses_frames_and_words():
    """The codebook embedding follows the best-matching frame, not the pooled vector."""
    torch.manual_seed(0)
    model = build_model(tiny_config(), N_MELS).eval()
    mel = torch.randn(1, N_MELS, 40)
    lengths = torch.tensor([40])
    with torch.no_grad():
        base = model(mel=mel, mel_lengths=lengths)["audio_codes"]
        changed = mel.clone()
        changed[:, :, 20:24] += 3.0  # one loud event in one time patch
        moved = model(mel=changed, mel_lengths=lengths)["audio_codes"]
    assert (base - moved).abs().max() > 1e-4
