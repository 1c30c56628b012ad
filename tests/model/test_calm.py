"""CALM's alignment proper (model.calm): acoustic tokens through the pretrained text model.

Models: the project's tiny patch audio tower (model_helpers) and a TINY RANDOM GPT-2 saved to a
tmp dir by hf_helpers (decoder-only, last-token pooling), dropout on.
"""

from __future__ import annotations

import pytest
import torch
from hf_helpers import tiny_gpt2
from model_helpers import N_MELS, tiny_config
from pydantic import ValidationError
from test_gradcache import full_batch_backward, grads_of, max_diff

from model.clap import build_model
from model.config import CalmConfig, LossConfig, ModelConfig, TextEncoderConfig
from model.gradcache import cached_step
from model.hf_text import HFTokenizer
from model.losses import ContrastiveLoss

TEXTS = [
    "a dog barks",
    "rain on a roof",
    "a man speaks",
    "a bell rings twice",
    "wind",
    "a car passes by",
    "birds sing",
]


@pytest.fixture(scope="module")
def calm(tmp_path_factory):
    d = tiny_gpt2(tmp_path_factory.mktemp("calm") / "gpt2")
    cfg = tiny_config().model_copy(
        update={
            "text": TextEncoderConfig(kind="hf", path=str(d), max_len=24, dropout=0.1),
            "calm": CalmConfig(enabled=True),
            "loss": LossConfig(kind="mga", hard_negative_beta=0.5),
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg, N_MELS)
    ids, mask = HFTokenizer(d).encode_batch(TEXTS, 24)
    g = torch.Generator().manual_seed(1)
    batch = {
        "mel": torch.randn(7, N_MELS, 40, generator=g),
        "mel_lengths": torch.tensor([40, 33, 25, 40, 17, 9, 40]),
        "ids": ids,
        "mask": mask,
        "groups": torch.arange(7),
    }
    return model, batch, cfg


def test_audio_goes_through_the_language_model(calm):
    model, batch, _ = calm
    model.eval()
    with torch.no_grad():
        out = model(mel=batch["mel"], mel_lengths=batch["mel_lengths"])
        emb = out["audio_emb"]
        # padding beyond each clip's frames changes nothing (acoustic tokens are masked)
        padded = torch.cat([batch["mel"], torch.full((7, N_MELS, 12), 4.0)], dim=2)
        again = model(mel=padded, mel_lengths=batch["mel_lengths"])["audio_emb"]
    assert emb.shape == (7, 16)
    torch.testing.assert_close(again, emb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(7))
    # the LM's weights shape the audio embedding
    lm = model.text.impl.model
    with torch.no_grad():
        lm.h[0].mlp.c_fc.weight.mul_(1.5)
        changed = model(mel=batch["mel"], mel_lengths=batch["mel_lengths"])["audio_emb"]
        lm.h[0].mlp.c_fc.weight.div_(1.5)
    assert (changed - emb).abs().max() > 1e-4
    model.train()
    model.zero_grad()
    model(mel=batch["mel"], mel_lengths=batch["mel_lengths"])["audio_emb"].sum().backward()
    assert model.calm_in.weight.grad.abs().sum() > 0
    assert model.audio.patch.weight.grad.abs().sum() > 0
    assert lm.h[1].attn.c_attn.weight.grad.abs().sum() > 0
    assert model.text_proj.weight.grad is None  # text side untouched by an audio-only forward


@pytest.mark.parametrize("chunk", [3])
def test_gradient_cache_exact_with_calm(calm, chunk):
    model, batch, cfg = calm
    model.train()
    loss_fn = ContrastiveLoss(cfg.loss)
    ref = grads_of(model, lambda: full_batch_backward(model, batch, loss_fn, chunk))
    got = grads_of(model, lambda: cached_step(model, batch, loss_fn, chunk))
    assert sorted(got) == sorted(ref)
    assert max_diff(ref, got) < 1e-5


def test_calm_needs_an_hf_text_model():
    with pytest.raises(ValidationError, match="model.calm.enabled needs model.text.kind=hf"):
        ModelConfig(calm=CalmConfig(enabled=True))
