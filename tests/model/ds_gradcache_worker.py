"""Worker for tests/model/test_gradcache_deepspeed.py, run by the real DeepSpeed launcher.

    deepspeed --num_gpus 2 --master_port P tests/model/ds_gradcache_worker.py --out R.json \
        --cases 0:auto 1:auto 2:auto 3:auto 2:none

Each case ``STAGE:SYNC[:GAS]`` builds a fresh tiny CLAP (dropout and SpecAugment ON) in a
DeepSpeed engine with ZeRO ``STAGE`` and plain SGD, takes one optimizer step with
``cached_step`` (chunk 4 over 6 samples per rank: chunks 4 + 2), and compares the parameters
with a single-process reference: the same model and SGD over the union of both ranks' data,
one full-batch backward (the chunk forwards run in the same order under the same seeds, so
dropout and SpecAugment masks are identical). ``plain`` as SYNC runs the uncached DeepSpeed
step with the gathered loss instead. Case ``loss`` checks the gathered-loss gradient against
the single-process loss gradient. Rank 0 writes ``{case: {max_diff, step_size, ...}}``.
"""

from __future__ import annotations

import argparse
import json
import os

import deepspeed
import torch
import torch.distributed as dist

from model.clap import build_model
from model.config import (
    AudioEncoderConfig,
    LossConfig,
    ModelConfig,
    SpecAugmentConfig,
    TextEncoderConfig,
)
from model.gradcache import BATCH_KEYS, cached_step, plain_step
from model.losses import ContrastiveLoss
from model.training import init_distributed

N_MELS, PER_RANK, CHUNK, LR = 16, 6, 4, 0.2

CFG = ModelConfig(
    audio=AudioEncoderConfig(
        dim=32,
        depth=2,
        heads=2,
        patch_freq=8,
        patch_time=4,
        max_frames=48,
        dropout=0.1,
        pooling="cls",
        multirate=(2,),
        specaugment=SpecAugmentConfig(freq_mask=4, time_mask=6),
    ),
    text=TextEncoderConfig(vocab_size=64, dim=32, depth=1, heads=2, max_len=12, dropout=0.1),
    embed_dim=16,
    loss=LossConfig(kind="mga", hard_negative_beta=0.5, label_smoothing=0.1, codebook_size=8),
)


FRAMES = 40


def use_hf_towers(ast_dir: str, gpt2_dir: str) -> None:
    """Swap in transformers towers (``--hf-audio`` AST dir, ``--hf-text`` GPT-2 dir; TINY
    RANDOM models saved by tests/model/hf_helpers.py), dropout 0.1 in both."""
    global CFG, N_MELS, FRAMES
    N_MELS, FRAMES = 32, 64
    CFG = ModelConfig(
        audio=AudioEncoderConfig(kind="ast", path=ast_dir, max_frames=FRAMES, dropout=0.1),
        text=TextEncoderConfig(kind="hf", path=gpt2_dir, max_len=12, dropout=0.1),
        embed_dim=16,
        loss=LossConfig(kind="mga", hard_negative_beta=0.5, label_smoothing=0.1),
    )


def make_data(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, 10, dtype=torch.long)
    mask[:, 7:] = 0
    # Group 0 spans both ranks' first samples: a cross-rank masked pair.
    groups = torch.arange(n)
    groups[PER_RANK] = 0
    return {
        "mel": torch.randn(n, N_MELS, FRAMES, generator=g),
        "mel_lengths": torch.randint(16, FRAMES + 1, (n,), generator=g),
        "ids": torch.randint(0, 64, (n, 10), generator=g),
        "mask": mask,
        "groups": groups,
    }


def rank_slice(batch: dict, rank: int, micro: int, world: int) -> dict:
    start = (micro * world + rank) * PER_RANK
    return {k: v[start : start + PER_RANK] for k, v in batch.items()}


def reference(world: int, gas: int, chunk: int, data: dict) -> dict[str, torch.Tensor]:
    """Single-process fp32 SGD step over the union of all ranks' (and micro-steps') data."""
    torch.manual_seed(0)
    model = build_model(CFG, N_MELS).to(data["mel"].device).train()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = ContrastiveLoss(CFG.loss)
    for micro in range(gas):
        outs, groups = [], []
        for r in range(world):
            part = rank_slice(data, r, micro, world)
            torch.manual_seed(1000 + 10 * micro + r)  # the seed that rank r used in the engine
            for i in range(0, PER_RANK, chunk):
                outs.append(model(**{k: part[k][i : i + chunk] for k in BATCH_KEYS}))
            groups.append(part["groups"])
        full = {k: torch.cat([o[k] for o in outs]) for k in outs[0] if outs[0][k].dim() > 0}
        full["logit_scale"] = outs[0]["logit_scale"]
        (loss_fn(**full, groups=torch.cat(groups))["loss"] / gas).backward()
    opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def run_case(case: str, data: dict, bf16: bool = False) -> dict:
    parts = case.split(":")
    stage, sync = int(parts[0]), parts[1]
    gas = int(parts[2]) if len(parts) > 2 else 1
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = build_model(CFG, N_MELS).train()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    ds_config = {
        "train_micro_batch_size_per_gpu": PER_RANK,
        "gradient_accumulation_steps": gas,
        "zero_optimization": {"stage": stage},
        "gradient_clipping": 0.0,
        "zero_allow_untested_optimizer": True,  # plain torch SGD, to compare exactly
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "bf16": {"enabled": bf16},
    }
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    data = {k: v.to(engine.device) for k, v in data.items()}
    loss_fn = ContrastiveLoss(CFG.loss, rank=rank, world_size=world)
    chunk = PER_RANK if sync == "plain" else CHUNK
    for micro in range(gas):
        torch.manual_seed(1000 + 10 * micro + rank)
        batch = rank_slice(data, rank, micro, world)
        if sync == "plain":
            plain_step(engine, batch, loss_fn)
        else:
            cached_step(engine, batch, loss_fn, chunk, sync=sync)
    params = dict(engine.module.named_parameters())
    if bf16:  # the module holds bf16 copies; the update lives in the fp32 master weights
        from deepspeed.utils import safe_get_full_fp32_param

        # (None where no fp32 master is mapped, e.g. ZeRO-0: then the bf16 copy, rounded.)
        got = {
            n: (safe_get_full_fp32_param(p) if safe_get_full_fp32_param(p) is not None else p)
            .detach()
            .float()
            .cpu()
            for n, p in params.items()
        }
    else:
        with deepspeed.zero.GatheredParameters(list(params.values()), enabled=stage == 3):
            got = {n: p.detach().float().cpu() for n, p in params.items()}
    ref = {n: p.cpu() for n, p in reference(world, gas, chunk, data).items()}
    diff = max((got[n] - ref[n]).abs().max().item() for n in ref)
    step = max((ref[n] - init[n]).abs().max().item() for n in ref)
    # Error of the update relative to the update itself (meaningful under bf16 rounding).
    err = sum(((got[n] - ref[n]) ** 2).sum().item() for n in ref) ** 0.5
    rel = err / sum(((ref[n] - init[n]) ** 2).sum().item() for n in ref) ** 0.5
    engine.destroy()
    worst = sorted(ref, key=lambda n: -(got[n] - ref[n]).abs().max().item())[:2]
    return {
        "max_diff": diff,
        "step_size": step,
        "rel_update_err": rel,
        "worst": worst,
        "stage": stage,
        "sync": sync,
        "gas": gas,
        "bf16": bf16,
    }


def loss_case(data: dict) -> dict:
    """Gathered-loss gradient on each rank vs the single-process loss gradient."""
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(7)
    n = world * PER_RANK
    audio, text = torch.randn(n, 16, generator=g), torch.randn(n, 16, generator=g)
    scale = torch.tensor(9.0)
    cfg = LossConfig(kind="mga", hard_negative_beta=0.7, label_smoothing=0.1)

    def leaf(x):
        return x.clone().requires_grad_(True)

    a, t, s = leaf(audio), leaf(text), leaf(scale)
    ContrastiveLoss(cfg)(a, t, s, groups=data["groups"][:n])["loss"].backward()
    sl = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    la, lt, ls = leaf(audio[sl]), leaf(text[sl]), leaf(scale)
    out = ContrastiveLoss(cfg, rank, world)(la, lt, ls, groups=data["groups"][:n][sl])
    out["loss"].backward()
    # DeepSpeed/DDP average over ranks: the averaged gradient must be the global one.
    ga, gt, gs = la.grad / world, lt.grad / world, ls.grad.clone()
    dist.all_reduce(gs)
    gs /= world
    diff = max(
        (ga - a.grad[sl]).abs().max().item(),
        (gt - t.grad[sl]).abs().max().item(),
        (gs - s.grad).abs().item(),
    )
    return {"max_diff": diff, "step_size": a.grad.abs().max().item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", nargs="+", default=["0:auto", "1:auto", "2:auto", "3:auto"])
    ap.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", "0")))
    ap.add_argument("--bf16", action="store_true", help="DeepSpeed bf16 (on a GPU)")
    ap.add_argument("--hf-audio", help="AST model dir: run with transformers towers")
    ap.add_argument("--hf-text", help="GPT-2 model dir (with --hf-audio)")
    args = ap.parse_args()
    if args.hf_audio:
        use_hf_towers(args.hf_audio, args.hf_text)
    # the trainer's own init (model/training.py): it also unlinks DeepSpeed's /dev/shm buffer
    init_distributed("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(args.local_rank)
    torch.set_num_threads(1)
    data = make_data(2 * dist.get_world_size() * PER_RANK, seed=3)
    results = {}
    for case in args.cases:
        results[case] = loss_case(data) if case == "loss" else run_case(case, data, args.bf16)
        if dist.get_rank() == 0:
            print(f"CASE {case}: {results[case]}", flush=True)
    if dist.get_rank() == 0:
        with open(args.out + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
