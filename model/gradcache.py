"""Exact gradient cache (GradCache, Gao et al. 2021) that works inside a DeepSpeed engine.

Signature::

    cached_step(engine_or_model, batch, loss_fn, chunk_size, *, deepspeed_engine=None,
                sync="auto", autocast_dtype=None, step=True) -> dict[str, Tensor]

- ``engine_or_model``: a ``deepspeed.DeepSpeedEngine`` wrapping a :class:`model.clap.CLAP`, or
  a bare ``CLAP`` (then the caller owns the optimizer; gradients are left in ``.grad``).
  ``deepspeed_engine=`` may name the engine explicitly (then the first argument is ignored for
  dispatch except as the forward callable when it is the engine itself).
- ``batch``: ``{"mel": [B, n_mels, T], "mel_lengths": [B], "ids": [B, L], "mask": [B, L],
  "tr_ids"/"tr_mask": [B, L'] (optional), "groups": [B] (optional)}``, already on the model's
  device; B may differ per rank.
- ``loss_fn``: a :class:`model.losses.ContrastiveLoss` (its ``loss_from_features`` is used: the
  cache gathers the embeddings itself), or any callable
  ``f(audio_emb=, text_emb=, logit_scale=, groups=, **other_outputs) -> {"loss": ..., ...}``
  over GLOBAL (already gathered) features.
- ``chunk_size``: samples per forward/backward chunk (the last chunk may be smaller).
- ``sync`` (DeepSpeed only): how the chunk backwards form ONE gradient-reduction unit.
  ``"coalesce"``: ``engine.coalesce_grad_reduction()`` (ZeRO 1/2/3, gradient_accumulation 1);
  ``"boundary"``: ``engine.set_gradient_accumulation_boundary(False)`` for every chunk but the
  last, whose flag is the engine's natural boundary (works for ZeRO 0-3 and composes with
  ``gradient_accumulation_steps > 1``); ``"auto"``: coalesce when allowed, else boundary;
  ``"none"``: no control at all — the ZeRO-1/2 trap, kept only so a test can show it is wrong.
- ``autocast_dtype``: e.g. ``torch.bfloat16`` to run the forwards under ``torch.autocast``
  (the loss always runs in fp32). DeepSpeed's own ``bf16`` / ``torch_autocast`` also work.
- ``step``: call ``engine.step()`` once at the end (DeepSpeed only).
Returns the detached loss terms of the global batch (``"loss"``, ``"contrastive"``, ...).

The three phases:
1. no-grad forward per chunk, recording the CPU and CUDA RNG state before each chunk (the
   model's dropout AND SpecAugment draw from the torch RNG inside ``forward``);
2. all-gather the cached outputs over ranks (no grad), compute the loss over the global batch
   w.r.t. those outputs as leaves, keep the local slice of the output gradients;
3. re-forward each chunk with grad under its replayed RNG state and backward the surrogate
   ``world_size * sum(out * grad_out)`` (+ ``scalar * grad_scalar`` for data-independent 0-d
   outputs such as the logit scale, on the first chunk only).

Scaling: every rank computes the same global loss ``L``; a rank's surrogate yields its share of
``dL/dtheta``; the shares SUM to ``dL/dtheta`` while DeepSpeed AVERAGES over ranks, hence the
``world_size`` factor on per-sample outputs (not on the 0-d ones: those gradients are already
the full ``dL/ds`` on every rank). ``engine.backward`` divides by ``gradient_accumulation_steps``
as it does for a plain step, so accumulation means the same thing with or without the cache.
For a bare model under DDP-style averaging the same factor applies; single process: factor 1.

Model outputs: the model's ``forward(mel=, mel_lengths=, ids=, mask=)`` returns a dict;
tensors with a batch dimension are cached and gathered; 0-d tensors must not depend on the data.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from model.losses import all_gather_no_grad, gather_sizes

log = logging.getLogger(__name__)

BATCH_KEYS = ("mel", "mel_lengths", "ids", "mask")
# The model inputs a step forwards (those present): BATCH_KEYS, and a transcript for CALM's
# multimodal audio path (model.calm.with_transcript), chunked with its clips like the rest.
INPUT_KEYS = (*BATCH_KEYS, "tr_ids", "tr_mask")
SYNC_MODES = ("auto", "coalesce", "boundary", "none")


@dataclass
class RngState:
    """CPU + CUDA RNG state captured before a chunk's first forward (GradCache's RandContext)."""

    cpu: Tensor
    cuda: list[Tensor] | None

    @classmethod
    def capture(cls) -> RngState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), cuda)

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block under this state; the global RNG is left as it was before."""
        devices = list(range(len(self.cuda))) if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def _is_engine(obj: Any) -> bool:
    return hasattr(obj, "backward") and hasattr(obj, "step") and hasattr(obj, "module")


def _chunks(batch: dict[str, Tensor], chunk_size: int) -> list[dict[str, Tensor]]:
    n = batch["mel"].shape[0]
    for key in (*INPUT_KEYS, "groups"):
        if key in batch and batch[key] is not None and batch[key].shape[0] != n:
            raise ValueError(f"batch[{key!r}] has {batch[key].shape[0]} rows, mel has {n}")
    return [
        {k: batch[k][i : i + chunk_size] for k in INPUT_KEYS if batch.get(k) is not None}
        for i in range(0, n, chunk_size)
    ]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _resolve_sync(engine: Any, sync: str) -> str:
    if sync not in SYNC_MODES:
        raise ValueError(f"sync must be one of {SYNC_MODES}, got {sync!r}")
    if sync != "auto":
        return sync
    stage = int(engine.zero_optimization_stage())
    if (
        stage in (1, 2, 3)
        and engine.gradient_accumulation_steps() == 1
        and hasattr(engine.optimizer, "_coalesce_grad_reduction")
    ):
        return "coalesce"
    return "boundary"


def cached_step(
    engine_or_model: nn.Module,
    batch: dict[str, Tensor],
    loss_fn: Callable[..., dict[str, Tensor]],
    chunk_size: int,
    *,
    deepspeed_engine: Any = None,
    sync: str = "auto",
    autocast_dtype: torch.dtype | None = None,
    step: bool = True,
) -> dict[str, Tensor]:
    """One exact gradient-cached training step (see the module docstring)."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    engine = (
        deepspeed_engine
        if deepspeed_engine is not None
        else (engine_or_model if _is_engine(engine_or_model) else None)
    )
    forward_fn = engine if engine is not None else engine_or_model
    chunks = _chunks(batch, chunk_size)
    _, world_size = _world()
    device = batch["mel"].device
    amp = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )

    # Phase 1: no-grad forward per chunk, RNG recorded before each.
    states: list[RngState] = []
    cached: list[dict[str, Tensor]] = []
    with torch.no_grad():
        for chunk in chunks:
            states.append(RngState.capture())
            with amp:
                out = forward_fn(**chunk)
            cached.append({k: v.detach().float() for k, v in out.items()})
    per_sample = [k for k, v in cached[0].items() if v.dim() > 0]
    scalars = [k for k, v in cached[0].items() if v.dim() == 0]

    # Phase 2: global loss on gathered outputs; gradients w.r.t. the outputs as leaves.
    local = {k: torch.cat([c[k] for c in cached]) for k in per_sample}
    n_local = local[per_sample[0]].shape[0]
    groups = batch.get("groups")
    if world_size > 1:
        sizes = gather_sizes(n_local, device)
        offset = sum(sizes[: dist.get_rank()])
        global_out = {k: all_gather_no_grad(v, sizes) for k, v in local.items()}
        groups = None if groups is None else all_gather_no_grad(groups, sizes)
    else:
        offset = 0
        global_out = local
    leaves = {k: v.requires_grad_(True) for k, v in global_out.items()}
    leaves.update({k: cached[0][k].clone().requires_grad_(True) for k in scalars})
    compute = getattr(loss_fn, "loss_from_features", loss_fn)
    with torch.enable_grad():
        terms = compute(**leaves, groups=groups)
        names = list(leaves)
        grads = torch.autograd.grad(terms["loss"], [leaves[k] for k in names], allow_unused=True)
    grad_of = {
        k: (g if g is not None else torch.zeros_like(leaves[k]))
        for k, g in zip(names, grads, strict=True)
    }
    local_grads = {k: grad_of[k][offset : offset + n_local] for k in per_sample}

    # Phase 3: re-forward each chunk under its replayed RNG, surrogate backward.
    mode = _resolve_sync(engine, sync) if engine is not None else "plain"
    natural_boundary = engine.is_gradient_accumulation_boundary() if engine is not None else True
    saved_flag = getattr(engine, "_is_gradient_accumulation_boundary", None)
    sync_ctx = engine.coalesce_grad_reduction() if mode == "coalesce" else contextlib.nullcontext()
    start = 0
    with sync_ctx:
        for i, (chunk, state) in enumerate(zip(chunks, states, strict=True)):
            n = chunk["mel"].shape[0]
            with state.replay(), amp:
                out = forward_fn(**chunk)
            surrogate = (
                sum((out[k].float() * local_grads[k][start : start + n]).sum() for k in per_sample)
                * world_size
            )
            if i == 0:
                surrogate = surrogate + sum((out[k].float() * grad_of[k]).sum() for k in scalars)
            start += n
            if engine is None:
                surrogate.backward()
                continue
            if mode == "boundary":
                engine.set_gradient_accumulation_boundary(
                    natural_boundary if i == len(chunks) - 1 else False
                )
            engine.backward(surrogate)
    if engine is not None:
        if step:
            engine.step()
        # Hand the boundary back to the engine's own micro-step counter.
        engine._is_gradient_accumulation_boundary = saved_flag
    return {k: v.detach() for k, v in terms.items()}


def plain_step(
    engine_or_model: nn.Module,
    batch: dict[str, Tensor],
    loss_fn: Callable[..., dict[str, Tensor]],
    *,
    autocast_dtype: torch.dtype | None = None,
    step: bool = True,
) -> dict[str, Tensor]:
    """The reference step without caching: one forward/backward of the whole local batch.

    ``loss_fn`` here is called directly (a ``ContrastiveLoss`` gathers with gradient itself).
    """
    engine = engine_or_model if _is_engine(engine_or_model) else None
    amp = (
        torch.autocast(device_type=batch["mel"].device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with amp:
        out = engine_or_model(**{k: batch[k] for k in INPUT_KEYS if batch.get(k) is not None})
    out = {k: v.float() for k, v in out.items()}
    terms = loss_fn(**out, groups=batch.get("groups"))
    if engine is None:
        terms["loss"].backward()
    else:
        engine.backward(terms["loss"])
        if step:
            engine.step()
    return {k: v.detach() for k, v in terms.items()}
