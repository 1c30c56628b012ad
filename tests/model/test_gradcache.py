"""Single-process proof: the cached step's gradients equal one full-batch backward.

Dropout and SpecAugment are ON. The full-batch reference runs the chunk forwards in the same
order from the same seed (so every dropout / SpecAugment mask is the same draw) but keeps the
whole graph and backpropagates the global loss once — the gradient the cache must reproduce.
With randomness off, the reference is a single forward of the whole batch.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from model_helpers import N_MELS, make_batch, tiny_config

from model import gradcache
from model.clap import build_model
from model.gradcache import BATCH_KEYS, cached_step, plain_step
from model.losses import ContrastiveLoss

B = 7


def grads_of(model, fn, seed: int = 5) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    fn()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def full_batch_backward(model, batch, loss_fn, chunk: int) -> None:
    outs = [model(**{k: batch[k][i : i + chunk] for k in BATCH_KEYS}) for i in range(0, B, chunk)]
    full = {k: torch.cat([o[k] for o in outs]) for k in outs[0] if outs[0][k].dim() > 0}
    full["logit_scale"] = outs[0]["logit_scale"]
    loss_fn(**full, groups=batch["groups"])["loss"].backward()


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[n] - b[n]).abs().max().item() for n in a)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_model(cfg, N_MELS).train()
    return model, make_batch(B), ContrastiveLoss(cfg.loss)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4])  # 7 = 2+2+2+1, 3+3+1, 4+3: uneven last chunks
def test_cached_equals_full_batch_with_dropout_and_specaugment(setup, chunk):
    model, batch, loss_fn = setup
    ref = grads_of(model, lambda: full_batch_backward(model, batch, loss_fn, chunk))
    got = grads_of(model, lambda: cached_step(model, batch, loss_fn, chunk))
    assert len(got) == len(list(model.parameters()))  # every parameter received a gradient
    assert max_diff(ref, got) < 1e-5
    # Sanity: the randomness is real, so another chunking of the reference differs.
    other = grads_of(model, lambda: full_batch_backward(model, batch, loss_fn, B))
    assert max_diff(ref, other) > 1e-3


def test_without_rng_replay_the_gradients_are_wrong(setup, monkeypatch):
    """Negative control: with the replay disabled the comparison must fail."""
    model, batch, loss_fn = setup
    ref = grads_of(model, lambda: full_batch_backward(model, batch, loss_fn, 3))
    monkeypatch.setattr(gradcache.RngState, "replay", lambda self: contextlib.nullcontext())
    got = grads_of(model, lambda: cached_step(model, batch, loss_fn, 3))
    assert max_diff(ref, got) > 1e-3


def test_no_randomness_matches_a_single_full_forward():
    torch.manual_seed(0)
    cfg = tiny_config(dropout=0.0, specaugment=None)
    cfg = cfg.model_copy(update={"text": cfg.text.model_copy(update={"dropout": 0.0})})
    model = build_model(cfg, N_MELS).train()
    batch, loss_fn = make_batch(B), ContrastiveLoss(cfg.loss)
    ref = grads_of(model, lambda: plain_step(model, batch, loss_fn))
    for chunk in (2, 5):
        got = grads_of(model, lambda c=chunk: cached_step(model, batch, loss_fn, c))
        assert max_diff(ref, got) < 1e-5


def test_loss_value_and_rng_stream(setup):
    model, batch, loss_fn = setup
    torch.manual_seed(11)
    terms = cached_step(model, batch, loss_fn, 3)
    after_cached = torch.rand(1)
    torch.manual_seed(11)
    with torch.no_grad():
        for i in range(0, B, 3):
            model(**{k: batch[k][i : i + 3] for k in BATCH_KEYS})
    # The replay forks the RNG: the global stream advances as for pass 1 only.
    assert torch.equal(after_cached, torch.rand(1))
    assert {"loss", "contrastive", "codebook_reg"} <= terms.keys()
    assert not terms["loss"].requires_grad and torch.isfinite(terms["loss"])


def test_bf16_autocast_composes(setup):
    model, batch, loss_fn = setup

    def ref_fn():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs = [model(**{k: batch[k][i : i + 4] for k in BATCH_KEYS}) for i in (0, 4)]
        full = {
            k: torch.cat([o[k] for o in outs]).float()
            for k in ("audio_emb", "text_emb", "audio_codes", "text_codes")
        }
        full["logit_scale"] = outs[0]["logit_scale"].float()
        loss_fn(**full, groups=batch["groups"])["loss"].backward()

    ref = grads_of(model, ref_fn)
    got = grads_of(
        model, lambda: cached_step(model, batch, loss_fn, 4, autocast_dtype=torch.bfloat16)
    )
    scale = max(v.abs().max().item() for v in ref.values())
    assert max_diff(ref, got) < 1e-2 * scale


def test_bad_arguments(setup):
    model, batch, loss_fn = setup
    with pytest.raises(ValueError, match="chunk_size"):
        cached_step(model, batch, loss_fn, 0)
    bad = dict(batch, ids=batch["ids"][:3])
    with pytest.raises(ValueError, match="rows"):
        cached_step(model, bad, loss_fn, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a lent one)")
@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_rng_replay_and_autocast(amp):
    """On GPU, dropout / SpecAugment draw from the CUDA generator: the replay must cover it."""
    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_model(cfg, N_MELS).cuda().train()
    batch = {k: v.cuda() for k, v in make_batch(B).items()}
    loss_fn = ContrastiveLoss(cfg.loss)
    ctx = torch.autocast("cuda", dtype=amp) if amp else contextlib.nullcontext()

    def ref_fn():
        with ctx:
            outs = [model(**{k: batch[k][i : i + 3] for k in BATCH_KEYS}) for i in range(0, B, 3)]
        full = {k: torch.cat([o[k] for o in outs]).float() for k in outs[0] if outs[0][k].dim() > 0}
        full["logit_scale"] = outs[0]["logit_scale"].float()
        loss_fn(**full, groups=batch["groups"])["loss"].backward()

    ref = grads_of(model, ref_fn)
    got = grads_of(model, lambda: cached_step(model, batch, loss_fn, 3, autocast_dtype=amp))
    scale = max(v.abs().max().item() for v in ref.values())
    assert max_diff(ref, got) < (1e-5 if amp is None else 1e-2) * max(scale, 1.0)
    other = grads_of(model, ref_fn, seed=6)  # another CUDA draw really changes the gradients
    assert max_diff(ref, other) > 1e-3
