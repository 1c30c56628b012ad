"""Helpers for jobs/pretrain.py: DeepSpeed config, parameter groups, RNG state, preemption,
metrics, validation. Kept here so the training script reads top to bottom.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import logging
import math
import os
import random
import resource
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from model.config import TrainConfig
from model.metrics import paired_recall

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Distributed init
# --------------------------------------------------------------------------------------------

SHM_BUFFER = "deepspeed_allreduce_buffer"


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """``deepspeed.init_distributed``, then unlink this rank's shared-memory all-reduce buffer;
    returns ``(rank, world size)``.

    On CPU, DeepSpeed's shm_comm op creates one 64 MiB POSIX shared-memory segment per rank
    (``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>``) and maps every peer's
    during init, but never unlinks it: every run, and every run a scheduler kills, left 64 MiB per
    rank in RAM (158 segments, 11 GB, on a machine running this suite for a day). Past a barrier
    all ranks have mapped all segments, so the names can go; the mappings live until exit.

    The process group is destroyed at exit (an ``atexit`` hook, so every way out of the job gets
    it: the normal end, ``sys.exit`` on a config error, a preemption return): gloo's C++ worker
    threads left to interpreter finalization abort the process with ``terminate called without an
    active exception`` after its work is done (pytorch#190489); measured here with 2 gloo ranks,
    14 of 60 runs aborted without the destroy, 0 of 60 with it.
    """
    import deepspeed

    deepspeed.init_distributed(**({"dist_backend": backend} if backend else {}))
    atexit.register(shutdown_distributed)
    rank, world = dist.get_rank(), dist.get_world_size()
    dist.barrier()
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"/dev/shm/{SHM_BUFFER}_{os.getuid()}_{addr}_{port}_{rank}")
    return rank, world


def shutdown_distributed() -> None:
    """Destroy the default process group if one is up (idempotent: a second call does nothing)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# DeepSpeed configuration
# --------------------------------------------------------------------------------------------


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` wins; nested dicts are merged key by key (a raw ds_config edits one leaf)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def make_ds_config(t: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config for a :class:`TrainConfig`; ``t.ds_config`` is merged last."""
    zero: dict[str, Any] = {"stage": t.zero_stage}
    adam: dict[str, Any] = {
        "lr": t.lr,
        "betas": list(t.betas),
        "eps": t.eps,
        "weight_decay": t.weight_decay,
        # torch's AdamW: no JIT build of DeepSpeed's fused_adam op (80 s on CPU, needs nvcc on GPU)
        "torch_adam": True,
    }
    if t.offload:
        if t.zero_stage == 0:
            raise ValueError("train.offload needs zero_stage >= 1")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if t.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
        # offloaded states are stepped on the CPU by DeepSpeedCPUAdam (compiled once)
        adam.pop("torch_adam")
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": t.grad_accum_steps,
        "train_batch_size": t.micro_batch * t.grad_accum_steps * world_size,
        "gradient_clipping": t.grad_clip,
        "steps_per_print": 10**9,  # our own progress line instead
        "wall_clock_breakdown": False,
        "optimizer": {"type": "AdamW", "params": adam},
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": max(t.max_steps, 1),
                "warmup_num_steps": t.warmup_steps,
                "warmup_min_ratio": 0.0,
                "warmup_type": "linear",
                "cos_min_ratio": t.min_lr_ratio,
            },
        },
        "zero_optimization": zero,
    }
    if t.precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    elif t.precision == "fp16":
        cfg["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 12}
    return deep_merge(cfg, t.ds_config)


def autocast_dtype(t: TrainConfig) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[t.precision]


# --------------------------------------------------------------------------------------------
# Seeding (the resumable RNG state itself: model.checkpoint.rng_state)
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Preemption and stopping
# --------------------------------------------------------------------------------------------


class StopFlag:
    """Set by SIGTERM/SIGINT (preemption, Ctrl-C); the loop checkpoints at the next step end.

    The handler only records the signal: saving inside a handler could interrupt a collective.
    """

    def __init__(self) -> None:
        self.signal: str | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal = signal.Signals(signum).name


def agree(local: list[float], device: torch.device | str) -> list[float]:
    """Sum small per-rank numbers over ranks (one collective per step: stop flag, stats)."""
    x = torch.tensor(local, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x)
    return x.tolist()


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def flops_per_sample(cfg: Any) -> float:
    """Approximate training FLOPs per sample (forward + backward = 3x forward) of the two
    transformer towers at full length: 2 FLOPs per parameter-token of the blocks and patch
    embedding, plus the attention products (4 T^2 d per layer). For the MFU estimate only."""

    def tower(d: int, depth: int, r: float, tokens: int) -> float:
        return depth * (2 * (4 + 2 * r) * d * d * tokens + 4 * tokens * tokens * d)

    a, t = cfg.model.audio, cfg.model.text
    n_patches = (
        max(1, cfg.features.n_mels // a.patch_freq) * max(1, a.max_frames // a.patch_time) + 1
    )
    fwd = (
        tower(a.dim, a.depth, a.mlp_ratio, n_patches)
        + 2 * a.patch_freq * a.patch_time * a.dim * n_patches
    )
    if t.kind == "transformer":
        fwd += tower(t.dim, t.depth, t.mlp_ratio, t.max_len)
    return 3.0 * fwd


def measured_flops_per_sample(model: Any, n_mels: int, frames: int, text_len: int) -> float:
    """3x the forward FLOPs of one full-length sample as torch's ``FlopCounterMode`` counts
    them: for towers :func:`flops_per_sample` has no formula for (transformers towers)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    batch = {
        "mel": torch.zeros(1, n_mels, frames),
        "mel_lengths": torch.tensor([frames]),
        "ids": torch.ones(1, text_len, dtype=torch.long),
        "mask": torch.ones(1, text_len, dtype=torch.bool),
    }
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**batch)
    model.train(was_training)
    return 3.0 * float(counter.get_total_flops())


def memory_stats() -> dict[str, float]:
    out = {"rss_max_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if torch.cuda.is_available():
        out["gpu_max_alloc_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


class MetricsLog:
    """JSONL (one line per logged step) + TensorBoard scalars; rank 0 only."""

    def __init__(
        self, out: Path, *, enabled: bool, tensorboard: bool, resume_step: int | None
    ) -> None:
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            # Steps after the checkpoint are redone after a resume: drop their old lines so the
            # file reads as one uninterrupted run.
            kept = [
                ln
                for ln in self.path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= resume_step
            ]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(ln + "\n" for ln in kept))
            os.replace(tmp, self.path)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._f = self.path.open("a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out / "tb"))

    def write(self, step: int, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": time.time(), **row}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self._f.close()
            if self._tb is not None:
                self._tb.close()


def progress_line(step: int, max_steps: int, row: dict[str, Any]) -> str:
    gn = row.get("grad_norm")
    return (
        f"step {step}/{max_steps} loss {row['loss']:.4f} T {row['temperature']:.4f}"
        f" lr {row['lr']:.2e}"
        + (f" gnorm {gn:.3f}" if gn is not None else "")
        + f" | {row['samples_per_s']:.1f} samples/s {row['audio_hours_per_s'] * 3600:.1f} audio-s/s"
        f" data-wait {100 * row['data_wait_frac']:.0f}% | rss {row['rss_max_gb']:.2f} GB"
    )


# --------------------------------------------------------------------------------------------
# Validation: retrieval on a val split
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def validate(
    engine: Any, batches: list[dict[str, Any]], device: torch.device | str, dtype: torch.dtype
) -> dict[str, float]:
    """Embed the rank's val batches, gather on every rank, retrieval recall over the union.

    Every rank runs the same number of forward calls (ZeRO-3 gathers parameters collectively),
    padding with repeats of its last batch whose outputs are discarded.
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    n_max = n_min = len(batches)
    if world > 1:
        x = torch.tensor([len(batches), -len(batches)], device=device)
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
        n_max, n_min = int(x[0]), -int(x[1])
    if n_min == 0:
        return {}  # some rank has no val sample: nothing to pad its forward calls with
    was_training = engine.module.training
    engine.module.eval()
    audio, text = [], []
    for i in range(n_max):
        b = batches[min(i, len(batches) - 1)]
        out = engine(
            mel=b["mel"].to(device, dtype),
            mel_lengths=b["mel_lengths"].to(device),
            ids=b["ids"].to(device),
            mask=b["mask"].to(device),
        )
        if i < len(batches):
            audio.append(out["audio_emb"].float().cpu())
            text.append(out["text_emb"].float().cpu())
    engine.module.train(was_training)
    local = (torch.cat(audio), torch.cat(text))
    gathered: list[Any] = [None] * world
    if world > 1:
        dist.all_gather_object(gathered, local)
    else:
        gathered = [local]
    a = torch.cat([g[0] for g in gathered])
    t = torch.cat([g[1] for g in gathered])
    recall = paired_recall((a @ t.t()).numpy())
    return {**{f"val_{k}": v for k, v in recall.items()}, "val_samples": float(a.shape[0])}
