"""ContrastiveLoss against hand-written formulas (single process; the 2-rank gather is proven
in test_gradcache_deepspeed.py, case ``loss``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.config import LossConfig
from model.losses import ContrastiveLoss


def embeddings(n: int = 6, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    t = F.normalize(a + 0.8 * torch.randn(n, d, generator=g), dim=-1)
    return a, t, torch.tensor(10.0)


def test_plain_infonce_is_symmetric_cross_entropy():
    a, t, s = embeddings()
    out = ContrastiveLoss(LossConfig(mask_same_group=False))(a, t, s)
    logits = s * a @ t.t()
    labels = torch.arange(6)
    ref = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    torch.testing.assert_close(out["loss"], ref)
    assert out.keys() == {"loss", "contrastive"}


def test_same_group_pairs_are_not_negatives():
    a, t, s = embeddings()
    groups = torch.tensor([0, 0, 1, 2, 3, 3])
    out = ContrastiveLoss(LossConfig())(a, t, s, groups=groups)
    logits = s * a @ t.t()
    same = (groups[:, None] == groups[None, :]) & ~torch.eye(6, dtype=torch.bool)
    masked = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(6)
    ref = 0.5 * (F.cross_entropy(masked, labels) + F.cross_entropy(masked.t(), labels))
    torch.testing.assert_close(out["loss"], ref)
    plain = ContrastiveLoss(LossConfig(mask_same_group=False))(a, t, s, groups=groups)
    assert not torch.allclose(plain["loss"], out["loss"])


def test_label_smoothing_matches_torch_and_stays_finite_with_masks():
    a, t, s = embeddings()
    out = ContrastiveLoss(LossConfig(label_smoothing=0.2, mask_same_group=False))(a, t, s)
    logits = s * a @ t.t()
    labels = torch.arange(6)
    ref = 0.5 * (
        F.cross_entropy(logits, labels, label_smoothing=0.2)
        + F.cross_entropy(logits.t(), labels, label_smoothing=0.2)
    )
    torch.testing.assert_close(out["loss"], ref)
    masked = ContrastiveLoss(LossConfig(label_smoothing=0.2))(
        a, t, s, groups=torch.tensor([0, 0, 0, 1, 1, 2])
    )
    assert torch.isfinite(masked["loss"])


def test_hard_negative_weighting():
    a, t, s = embeddings()
    base = ContrastiveLoss(LossConfig(mask_same_group=False))(a, t, s)["loss"]
    zero = ContrastiveLoss(LossConfig(kind="mga", hard_negative_beta=0.0))(a, t, s)["loss"]
    torch.testing.assert_close(zero, base)
    beta = 2.0
    out = ContrastiveLoss(LossConfig(kind="mga", hard_negative_beta=beta))(a, t, s)["loss"]
    sim = a @ t.t()

    def one_side(sim_m: torch.Tensor) -> torch.Tensor:
        n = sim_m.shape[0]
        total = 0.0
        for i in range(n):
            neg = [j for j in range(n) if j != i]
            w = torch.softmax(beta * sim_m[i, neg], 0) * (n - 1)
            denom = torch.exp(s * sim_m[i, i]) + (w * torch.exp(s * sim_m[i, neg])).sum()
            total = total - torch.log(torch.exp(s * sim_m[i, i]) / denom)
        return total / n

    torch.testing.assert_close(out, 0.5 * (one_side(sim) + one_side(sim.t())))
    assert out > base  # weight moves to the hardest (most similar) negatives


def test_codebook_regularizer_prefers_sparse_embeddings():
    a, t, s = embeddings(n=4)
    loss = ContrastiveLoss(LossConfig(codebook_size=4, codebook_weight=0.5))
    sparse = torch.eye(4, 8) * 3.0
    dense = torch.ones(4, 8)
    good = loss(a, t, s, audio_codes=sparse, text_codes=sparse)
    bad = loss(a, t, s, audio_codes=dense, text_codes=dense)
    assert good["codebook_reg"] < bad["codebook_reg"]
    # mean|x| / ||x||_F per modality, summed: dense ones -> 2 * 1 / sqrt(32).
    torch.testing.assert_close(bad["codebook_reg"], torch.tensor(2 / 32**0.5))
    torch.testing.assert_close(good["loss"], good["contrastive"] + 0.5 * good["codebook_reg"])


def test_gradient_reaches_the_temperature_and_bad_shapes_fail():
    a, t, _ = embeddings()
    s = torch.tensor(10.0, requires_grad=True)
    ContrastiveLoss(LossConfig())(a, t, s)["loss"].backward()
    assert s.grad is not None and s.grad != 0
    with pytest.raises(ValueError, match="same batch size"):
        ContrastiveLoss(LossConfig())(a, t[:3], s)
    with pytest.raises(ValueError, match="label_smoothing"):
        ContrastiveLoss(LossConfig(label_smoothing=1.5))


def test_mask_same_label_groups_clips_of_one_class() -> None:
    """model.loss.mask_same_label: two "dog" clips are not each other's negatives; unlabelled
    clips keep their own group; with the option off the groups are untouched."""
    from model.losses import loss_groups

    groups = torch.tensor([11, 12, 13, 14])
    labels = [("dog",), ("dog",), (), ("rain", "dog")]
    off = loss_groups(groups, labels, LossConfig())
    assert torch.equal(off, groups)
    on = loss_groups(groups, labels, LossConfig(mask_same_label=True))
    assert on[0] == on[1] and on[2] == 13 and on[3] not in (on[0], 13)
    assert torch.equal(
        on,
        loss_groups(
            groups, [("dog",), ("dog",), (), ("dog", "rain")], LossConfig(mask_same_label=True)
        ),
    )
    # the loss changes: the masked pair no longer counts as a negative
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(10.0)
    fn = ContrastiveLoss(LossConfig(mask_same_label=True))
    with_labels = fn(a, t, scale, on)["loss"]
    without = fn(a, t, scale, groups)["loss"]
    assert not torch.isclose(with_labels, without)
    with pytest.raises(ValueError, match="label sets"):
        loss_groups(groups, labels[:2], LossConfig(mask_same_label=True))
