"""CALM's alignment proper (model.calm): acoustic tokens through the pretrained text model,
alone or followed by the transcript's tokens (model.calm.with_transcript).

Models: the project's tiny patch audio tower (model_helpers) and TINY RANDOM transformers models
saved to a tmp dir by hf_helpers — a GPT-2 (decoder-only, last-token pooling) and an XLM-R
encoder (first-token pooling) — dropout on. Nothing here is pretrained.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_helpers import tiny_gpt2, tiny_xlmr
from model_helpers import N_MELS, tiny_config
from pydantic import ValidationError
from test_gradcache import full_batch_backward, grads_of, max_diff

from model.clap import build_model
from model.config import CalmConfig, LossConfig, ModelConfig, TextEncoderConfig
from model.gradcache import INPUT_KEYS, cached_step
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


TRANSCRIPTS = ["", "the cat sat on the mat", "", "hello there", "one two three", "", "yes"]


def _with_transcript(kind: str, tmp_path_factory) -> tuple:
    maker = tiny_gpt2 if kind == "gpt2" else tiny_xlmr
    d = maker(tmp_path_factory.mktemp(f"calm_tr_{kind}") / kind)
    cfg = tiny_config().model_copy(
        update={
            "text": TextEncoderConfig(kind="hf", path=str(d), max_len=24, dropout=0.1),
            "calm": CalmConfig(enabled=True, with_transcript=True),
            "loss": LossConfig(kind="mga", hard_negative_beta=0.5),
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg, N_MELS)
    tok = HFTokenizer(d)
    ids, mask = tok.encode_batch(TEXTS, 24)
    tr_ids, tr_mask = tok.encode_batch(TRANSCRIPTS, 16)
    # as the loader's collate: a sample without a fed transcript has an all-False row
    tr_mask &= torch.tensor([bool(t) for t in TRANSCRIPTS])[:, None]
    g = torch.Generator().manual_seed(1)
    batch = {
        "mel": torch.randn(7, N_MELS, 40, generator=g),
        "mel_lengths": torch.tensor([40, 33, 25, 40, 17, 9, 40]),
        "ids": ids,
        "mask": mask,
        "tr_ids": tr_ids,
        "tr_mask": tr_mask,
        "groups": torch.arange(7),
    }
    return model, batch, cfg


@pytest.fixture(scope="module", params=["gpt2", "xlmr"])
def calm_tr(request, tmp_path_factory):
    return _with_transcript(request.param, tmp_path_factory)


def test_transcript_tokens_join_the_acoustic_tokens(calm_tr):
    model, b, _ = calm_tr
    model.eval()
    audio = {"mel": b["mel"], "mel_lengths": b["mel_lengths"]}
    with torch.no_grad():
        alone = model(**audio)["audio_emb"]
        both = model(**audio, tr_ids=b["tr_ids"], tr_mask=b["tr_mask"])["audio_emb"]
        other = b["tr_ids"].roll(1, dims=1)  # other words, same mask
        swapped = model(**audio, tr_ids=other, tr_mask=b["tr_mask"])["audio_emb"]
    has = b["tr_mask"].any(dim=1)
    # a row without a transcript is exactly the audio-alone path (its padding is never read) ...
    torch.testing.assert_close(both[~has], alone[~has], atol=1e-5, rtol=1e-5)
    # ... a row with one is changed by it, and by which words it holds
    assert (both[has] - alone[has]).abs().amax(dim=1).min() > 1e-4
    assert (swapped[has] - both[has]).abs().amax(dim=1).min() > 1e-4
    model.train()
    model.zero_grad()
    model(**audio, tr_ids=b["tr_ids"], tr_mask=b["tr_mask"])["audio_emb"].sum().backward()
    words = model.text.impl.model.get_input_embeddings().weight.grad
    assert words[b["tr_ids"][b["tr_mask"]]].abs().sum() > 0  # the transcript's words learn
    assert model.calm_in.weight.grad.abs().sum() > 0


def test_gradient_cache_exact_with_calm_and_transcripts(calm_tr):
    """gradcache step == one full-batch backward (same chunked forwards, same RNG), dropout on."""
    model, batch, cfg = calm_tr
    model.train()
    loss_fn = ContrastiveLoss(cfg.loss)
    chunk = 3

    def full() -> None:
        outs = [
            model(**{k: batch[k][i : i + chunk] for k in INPUT_KEYS}) for i in range(0, 7, chunk)
        ]
        feats = {k: torch.cat([o[k] for o in outs]) for k in outs[0] if outs[0][k].dim() > 0}
        feats["logit_scale"] = outs[0]["logit_scale"]
        loss_fn(**feats, groups=batch["groups"])["loss"].backward()

    ref = grads_of(model, full)
    got = grads_of(model, lambda: cached_step(model, batch, loss_fn, chunk))
    assert sorted(got) == sorted(ref)
    assert "text.impl.model." + _word_table(model) in got  # the transcript path is in the step
    assert max_diff(ref, got) < 1e-5


def _word_table(model) -> str:
    table = model.text.impl.model.get_input_embeddings()
    return next(n for n, p in model.text.impl.model.named_parameters() if p is table.weight)


def test_with_transcript_needs_calm_and_a_transcript_needs_it_on(calm):
    with pytest.raises(ValidationError, match="with_transcript needs model.calm.enabled"):
        CalmConfig(with_transcript=True)
    model, batch, _ = calm  # CALM, audio alone
    with pytest.raises(ValueError, match="with_transcript is off"):
        model(mel=batch["mel"], tr_ids=batch["ids"], tr_mask=batch["mask"])


def test_embed_audio_reads_a_transcript_as_training_did(calm_tr, corpora_root):
    """The public API (``CLAP.embed_audio(..., transcripts=)``) on a tiny random CALM model
    with transcripts (see _with_transcript) and a real bundled clip: no transcript (None or "")
    is the audio-alone embedding, a transcript changes it, other words change it again; a model
    without the transcript path refuses transcripts."""
    from model.api import CLAP
    from model.config import ExperimentConfig
    from model.inference import Preprocessing
    from model.tokenizer import load_tokenizer, make_tokenize

    model, _, cfg = calm_tr
    exp = ExperimentConfig.model_validate(
        {"features": {"n_mels": N_MELS}, "model": cfg.model_dump(mode="json")}
    )
    tokenize = make_tokenize(load_tokenizer(cfg.text, None), cfg.text)
    m = CLAP(model.eval(), Preprocessing.of(exp), tokenize, cfg=exp, device="cpu")
    clip = sorted((corpora_root / "esc50_mini" / "audio").glob("*.wav"))[0]
    alone = m.embed_audio([clip])
    none = m.embed_audio([clip, clip], transcripts=[None, ""])
    said = m.embed_audio([clip, clip], transcripts=["a dog barks", "hello there"])
    np.testing.assert_allclose(none, np.vstack([alone, alone]), atol=1e-5)
    assert np.abs(said[0] - alone[0]).max() > 1e-4 and np.abs(said[1] - said[0]).max() > 1e-4
    with pytest.raises(ValueError, match="one transcript .* per audio item"):
        m.embed_audio([clip], transcripts=["a", "b"])
    plain = exp.model_copy(
        update={"model": exp.model.model_copy(update={"calm": CalmConfig(enabled=True)})}
    )
    m.cfg = plain
    with pytest.raises(ValueError, match="not trained to read them"):
        m.embed_audio([clip], transcripts=["a dog barks"])
