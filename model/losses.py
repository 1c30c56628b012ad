"""Contrastive losses (open_clip ``ClipLoss`` shape: gather_features / get_logits /
get_ground_truth / forward -> dict of named terms, ``"loss"`` = their weighted sum).

Global batch. With ``world_size > 1`` the embeddings of all ranks are all-gathered with a
gradient-correct gather (forward: all_gather; backward: all_reduce-sum of the incoming gradient,
then the local slice). Every rank computes the SAME loss over the global batch, so a rank's
local-embedding gradient is ``world_size * dL/de_local``; DeepSpeed / DDP average the parameter
gradients over ranks, which gives exactly ``dL/dtheta`` of the single-process global loss.
Per-rank batches may differ in size (padded for the collective, then cut).

Terms:
- ``contrastive``: symmetric InfoNCE (audio->text and text->audio) over ``logit_scale * a t^T``.
- groups (int64 ``[B]``): two samples with the same group id are never negatives of each
  other (two views / captions of one clip, or one class when labels say so); their logits are
  masked to -inf. Group ids must be globally unique per clip (e.g. a hash of the sample key).
  ``mask_same_label``: :func:`loss_groups` (called by the trainer on each batch) gives samples
  with the same non-empty class-label set one shared group id; the loss only sees ``groups``.
- ``label_smoothing``: the target puts ``1 - eps`` on the positive and ``eps`` spread over the
  unmasked candidates (masked ones never receive mass, so the loss stays finite).
- ``kind: mga`` with ``hard_negative_beta > 0``: MGA-CLAP / HCL hard-negative weighting. Each
  negative ``j`` of anchor ``i`` is weighted ``w_ij = (n-1) softmax_j(beta * sim_ij)`` (detached,
  mean 1 over the valid negatives), implemented as adding ``log w_ij`` to its logit.
- ``codebook_reg`` (when the model returns the codebook embeddings ``audio_codes`` /
  ``text_codes``): MGA-CLAP's sparsity regularizer, ``mean|x| / ||x||_F`` over the global
  batch for each modality (summed), weighted by ``codebook_weight``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dataprep.core.hashing import stable_hash
from model.config import LossConfig


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradient over ranks and returns the local slice."""

    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int], rank: int) -> Tensor:  # type: ignore[override]
        ctx.sizes, ctx.rank = sizes, rank
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def _gather_padded(x: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate ``x`` of every rank (dim 0 sizes ``sizes``), padding for the collective."""
    longest = max(sizes)
    pad = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
    buf = torch.cat([x.detach(), pad]).contiguous()
    parts = [torch.empty_like(buf) for _ in sizes]
    dist.all_gather(parts, buf)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def gather_sizes(n: int, device: torch.device) -> list[int]:
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    return [int(s.item()) for s in sizes]


def all_gather_with_grad(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Gradient-correct all_gather along dim 0 (sizes may differ per rank)."""
    sizes = sizes or gather_sizes(x.shape[0], x.device)
    return _GatherWithGrad.apply(x, sizes, dist.get_rank())


def all_gather_no_grad(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    sizes = sizes or gather_sizes(x.shape[0], x.device)
    return _gather_padded(x, sizes)


def loss_groups(groups: Tensor, labels: Sequence[Sequence[str]], cfg: LossConfig) -> Tensor:
    """The group ids the loss masks by. With ``cfg.mask_same_label`` every sample that carries
    class labels gets an id derived from its sorted label set (the same on every rank and run),
    so two clips of one class are not each other's negatives; unlabelled samples keep theirs."""
    if not cfg.mask_same_label:
        return groups
    if len(labels) != groups.shape[0]:
        raise ValueError(f"{len(labels)} label sets for {groups.shape[0]} group ids")
    out = groups.clone()
    for i, lab in enumerate(labels):
        if lab:
            out[i] = stable_hash("label", *sorted(set(lab)))
    return out


class ContrastiveLoss(nn.Module):
    def __init__(self, cfg: LossConfig, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        if not 0.0 <= cfg.label_smoothing < 1.0:
            raise ValueError("label_smoothing must lie in [0, 1)")
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size

    # -- open_clip-style pieces ---------------------------------------------------------------
    def gather_features(
        self,
        audio_emb: Tensor,
        text_emb: Tensor,
        groups: Tensor | None = None,
        **extra: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor | None, dict[str, Tensor]]:
        """Global-batch features (identity when ``world_size == 1``)."""
        if self.world_size == 1:
            return audio_emb, text_emb, groups, extra
        sizes = gather_sizes(audio_emb.shape[0], audio_emb.device)
        audio = all_gather_with_grad(audio_emb, sizes)
        text = all_gather_with_grad(text_emb, sizes)
        groups = None if groups is None else all_gather_no_grad(groups, sizes)
        extra = {k: all_gather_with_grad(v, sizes) for k, v in extra.items()}
        return audio, text, groups, extra

    def get_logits(self, audio: Tensor, text: Tensor, logit_scale: Tensor) -> tuple[Tensor, Tensor]:
        logits = logit_scale * audio.float() @ text.float().t()
        return logits, logits.t()

    def get_ground_truth(self, n: int, device: torch.device) -> Tensor:
        return torch.arange(n, device=device)

    def negative_mask(self, groups: Tensor | None, n: int, device: torch.device) -> Tensor:
        """``[n, n]`` bool, True where a pair is a usable candidate (positive or negative)."""
        eye = torch.eye(n, dtype=torch.bool, device=device)
        if groups is None or not self.cfg.mask_same_group:
            return torch.ones(n, n, dtype=torch.bool, device=device)
        same = groups[:, None] == groups[None, :]
        return ~same | eye

    # -- terms --------------------------------------------------------------------------------
    def _info_nce(self, logits: Tensor, valid: Tensor, sim: Tensor) -> Tensor:
        n = logits.shape[0]
        eye = torch.eye(n, dtype=torch.bool, device=logits.device)
        if self.cfg.kind == "mga" and self.cfg.hard_negative_beta > 0:
            negs = valid & ~eye
            w = (self.cfg.hard_negative_beta * sim.detach()).masked_fill(~negs, float("-inf"))
            count = negs.sum(-1, keepdim=True).clamp_min(1)
            log_w = torch.log_softmax(w, dim=-1) + count.log()
            logits = torch.where(negs, logits + log_w, logits)
        logits = logits.masked_fill(~valid, float("-inf"))
        logp = torch.log_softmax(logits, dim=-1)
        nll = -logp.diagonal()
        eps = self.cfg.label_smoothing
        if eps > 0:
            smooth = -(logp.masked_fill(~valid, 0.0).sum(-1)) / valid.sum(-1)
            nll = (1 - eps) * nll + eps * smooth
        return nll.mean()

    def loss_from_features(
        self,
        audio_emb: Tensor,
        text_emb: Tensor,
        logit_scale: Tensor,
        groups: Tensor | None = None,
        audio_codes: Tensor | None = None,
        text_codes: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The loss over ALREADY global features (no collective). Used by the gradient cache."""
        n = audio_emb.shape[0]
        if text_emb.shape[0] != n or (groups is not None and groups.shape[0] != n):
            raise ValueError("audio_emb, text_emb and groups must have the same batch size")
        logits_a, logits_t = self.get_logits(audio_emb, text_emb, logit_scale)
        valid = self.negative_mask(groups, n, audio_emb.device)
        sim = logits_a / logit_scale.detach()
        contrastive = 0.5 * (
            self._info_nce(logits_a, valid, sim) + self._info_nce(logits_t, valid.t(), sim.t())
        )
        terms = {"contrastive": contrastive}
        total = contrastive
        codes = [c for c in (audio_codes, text_codes) if c is not None]
        if codes:
            terms["codebook_reg"] = sum(
                c.float().abs().mean() / c.float().norm().clamp_min(1e-12) for c in codes
            )
            total = total + self.cfg.codebook_weight * terms["codebook_reg"]
        terms["loss"] = total
        return terms

    def forward(
        self,
        audio_emb: Tensor,
        text_emb: Tensor,
        logit_scale: Tensor,
        groups: Tensor | None = None,
        **extra: Tensor,
    ) -> dict[str, Tensor]:
        """Gather over ranks, then :meth:`loss_from_features`. ``extra``: ``*_codes``."""
        audio, text, groups, extra = self.gather_features(audio_emb, text_emb, groups, **extra)
        return self.loss_from_features(audio, text, logit_scale, groups, **extra)


def build_loss(cfg: LossConfig, rank: int = 0, world_size: int = 1) -> ContrastiveLoss:
    return ContrastiveLoss(cfg, rank, world_size)
