"""Gradient cache vs plain step: time overhead and peak memory as the batch grows.

    .venv/bin/python bench/gradcache.py                      # CPU, RSS
    .venv/bin/python bench/gradcache.py --device cuda --bf16 # GPU, CUDA max allocated

Two measurements, side by side in one run:

1. Time: the plain step (one forward + backward of a batch of ``chunk`` samples) against the
   cached step over the same samples (``chunk_size = chunk``: one no-grad forward, the loss,
   one re-forward + backward). The floor is one extra forward (~1.33x); target <= 1.4x.
   Repeats are interleaved; the ratio of the minima (and of the medians) is reported.
2. Memory: peak step memory at total batch ``chunk * f`` for each factor ``f`` (default
   1, 2, 4, 8), cached (fixed chunk) vs plain. On CPU each point runs in a fresh subprocess and
   reports the peak RSS increase over the process's RSS just before the step; on CUDA,
   ``torch.cuda.max_memory_allocated`` increase over the allocation before the step.
   Target: cached flat within 10% while plain grows.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.clap import build_model  # noqa: E402
from model.config import AudioEncoderConfig, ModelConfig, TextEncoderConfig  # noqa: E402
from model.gradcache import cached_step, plain_step  # noqa: E402
from model.losses import ContrastiveLoss  # noqa: E402

N_MELS = 64


def make(args: argparse.Namespace) -> tuple[torch.nn.Module, ContrastiveLoss]:
    cfg = ModelConfig(
        audio=AudioEncoderConfig(
            dim=args.dim,
            depth=args.depth,
            heads=4,
            patch_freq=16,
            patch_time=16,
            max_frames=args.frames,
            pooling="attentive",
        ),
        text=TextEncoderConfig(vocab_size=4000, dim=args.dim, depth=2, heads=4, max_len=32),
        embed_dim=128,
    )
    torch.manual_seed(0)
    return build_model(cfg, N_MELS).to(args.device).train(), ContrastiveLoss(cfg.loss)


def batch_of(n: int, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    b = {
        "mel": torch.randn(n, N_MELS, args.frames, generator=g),
        "mel_lengths": torch.full((n,), args.frames),
        "ids": torch.randint(0, 4000, (n, 32), generator=g),
        "mask": torch.ones(n, 32, dtype=torch.long),
        "groups": torch.arange(n),
    }
    return {k: v.to(args.device) for k, v in b.items()}


def one_step(model, loss_fn, batch, mode: str, chunk: int, amp) -> None:
    # Gradient buffers persist across steps, as in a training loop (DeepSpeed keeps its own).
    model.zero_grad(set_to_none=False)
    if mode == "cached":
        cached_step(model, batch, loss_fn, chunk, autocast_dtype=amp)
    else:
        plain_step(model, batch, loss_fn, autocast_dtype=amp)
    if torch.cuda.is_available() and batch["mel"].is_cuda:
        torch.cuda.synchronize()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure_memory(args: argparse.Namespace) -> int:
    """Peak step memory increase (bytes) of one step of ``args.mode`` at ``args.batch``."""
    amp = torch.bfloat16 if args.bf16 else None
    model, loss_fn = make(args)
    batch = batch_of(args.batch, args)
    for p in model.parameters():  # the persistent gradient buffers belong to the baseline
        p.grad = torch.zeros_like(p)
    if args.device == "cuda":
        one_step(model, loss_fn, batch_of(args.chunk, args), args.mode, args.chunk, amp)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        one_step(model, loss_fn, batch, args.mode, args.chunk, amp)
        return torch.cuda.max_memory_allocated() - base
    base = rss_bytes()
    one_step(model, loss_fn, batch, args.mode, args.chunk, amp)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base


def memory_point(args: argparse.Namespace, mode: str, batch: int) -> int:
    if args.device == "cuda":
        ns = argparse.Namespace(**{**vars(args), "mode": mode, "batch": batch})
        return measure_memory(ns)
    cmd = [
        sys.executable,
        __file__,
        "--_memory",
        mode,
        str(batch),
        "--chunk",
        str(args.chunk),
        "--frames",
        str(args.frames),
        "--dim",
        str(args.dim),
        "--depth",
        str(args.depth),
        "--threads",
        str(args.threads),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


def time_ratio(args: argparse.Namespace) -> dict[str, float]:
    amp = torch.bfloat16 if args.bf16 else None
    model, loss_fn = make(args)
    batch = batch_of(args.chunk, args)
    for mode in ("plain", "cached"):  # warm-up
        one_step(model, loss_fn, batch, mode, args.chunk, amp)
    times: dict[str, list[float]] = {"plain": [], "cached": [], "forward": []}
    for _ in range(args.repeats):
        for mode in ("plain", "cached", "forward"):
            t0 = time.perf_counter()
            if mode == "forward":  # the extra work the cache must do: one no-grad forward
                no_grad_forward(model, batch, amp)
            else:
                one_step(model, loss_fn, batch, mode, args.chunk, amp)
            times[mode].append(time.perf_counter() - t0)
    # The minimum is the least disturbed repeat on a shared machine; the median is reported too.
    plain, cached, fwd = min(times["plain"]), min(times["cached"]), min(times["forward"])
    return {
        "plain_s": plain,
        "cached_s": cached,
        "ratio": cached / plain,
        "floor": (plain + fwd) / plain,
        "ratio_median": statistics.median(times["cached"]) / statistics.median(times["plain"]),
    }


def no_grad_forward(model, batch, amp) -> None:
    amp_ctx = torch.autocast(batch["mel"].device.type, dtype=amp) if amp else nullcontext()
    with torch.no_grad(), amp_ctx:
        model(**{k: batch[k] for k in ("mel", "mel_lengths", "ids", "mask")})
    if batch["mel"].is_cuda:
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--bf16", action="store_true", help="torch.autocast bf16 forwards")
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--frames", type=int, default=512)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--_memory", nargs=2, metavar=("MODE", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args._memory:
        args.mode, args.batch = args._memory[0], int(args._memory[1])
        print(measure_memory(args))
        return

    timing = time_ratio(args)
    print(
        f"device={args.device} bf16={args.bf16} chunk={args.chunk} frames={args.frames} "
        f"dim={args.dim} depth={args.depth}"
    )
    print(
        f"step time, {args.chunk} samples: plain {timing['plain_s'] * 1e3:.0f} ms, "
        f"cached {timing['cached_s'] * 1e3:.0f} ms, ratio {timing['ratio']:.2f}x (target <= 1.4; "
        f"min of {args.repeats}, median ratio {timing['ratio_median']:.2f}x); floor "
        f"(plain + one no-grad forward) {timing['floor']:.2f}x"
    )
    rows = []
    for f in args.factors:
        b = args.chunk * f
        rows.append(
            {
                "batch": b,
                "cached": memory_point(args, "cached", b),
                "plain": memory_point(args, "plain", b),
            }
        )
    unit = "CUDA max allocated" if args.device == "cuda" else "peak RSS"
    print(f"{'batch':>6} {'cached MiB':>11} {'plain MiB':>10}   ({unit} increase during the step)")
    for r in rows:
        print(f"{r['batch']:>6} {r['cached'] / 2**20:>11.1f} {r['plain'] / 2**20:>10.1f}")
    c0, p0 = rows[0]["cached"], rows[0]["plain"]
    print(
        f"growth x{args.factors[-1] // args.factors[0]} batch: cached "
        f"{rows[-1]['cached'] / c0:.2f}x (target <= 1.10), plain {rows[-1]['plain'] / p0:.2f}x"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "timing": timing,
                    "memory": rows,
                    "args": {k: str(v) for k, v in vars(args).items()},
                }
            )
        )


if __name__ == "__main__":
    main()
