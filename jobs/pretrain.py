"""Contrastive audio-text pretraining on a shard set, with DeepSpeed (ZeRO 0-3).

Launch (the same script on CPU, one GPU, several GPUs, several nodes)::

    # CPU, 2 processes (gloo)
    deepspeed --num_gpus 2 --master_port 29511 jobs/pretrain.py --config configs/demo.yaml \\
        --shards outputs/shards --out outputs/run
    # all GPUs of this machine (NCCL); overrides are trailing section.key=value
    deepspeed jobs/pretrain.py --config configs/demo.yaml train.zero_stage=3 train.precision=bf16
    # several nodes: a hostfile with "host slots=N" lines (see infra/deepspeed/)
    deepspeed --hostfile infra/deepspeed/hostfile jobs/pretrain.py --config configs/demo.yaml
    # one process without the launcher
    RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29511 \\
        python jobs/pretrain.py --config configs/demo.yaml

Outputs under ``train.out``: ``metrics.jsonl`` + ``tb/`` (TensorBoard), ``checkpoints/`` (every
``train.save_every`` steps, on SIGTERM/SIGINT, at the end; the last ``train.keep_last`` kept) and
``final/`` (``model.safetensors`` fp32 weights, ``config.json``, tokenizer; read it with
``model.weights.load_for_eval``; no load path unpickles).
A rerun with the same ``--out`` resumes from the latest complete checkpoint: same loss sequence as
an uninterrupted run (model/optimizer/scheduler, RNG streams and the loader position restored).
Resuming TRUSTS ``--out``: DeepSpeed unpickles its own checkpoint files. A checkpoint whose
marker is not this project's, or whose files changed since the save, is refused before any file
is read (``model.checkpoint.verify_checkpoint``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from dataprep.core import storage
from dataprep.core.config import ConfigError
from dataprep.core.configfile import config_reference
from dataprep.core.shards import train_val_splits
from dataprep.loader import FingerprintMismatch, ShardLoader, iter_shard_texts
from model import finetune as ft
from model import training as tr
from model.checkpoint import (
    UntrustedCheckpoint,
    latest_checkpoint,
    load_checkpoint,
    resume_point,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from model.clap import build_model
from model.config import ExperimentConfig, load_config
from model.gradcache import INPUT_KEYS, cached_step, plain_step
from model.losses import ContrastiveLoss, loss_groups
from model.tokenizer import (
    TextTokenizer,
    load_tokenizer,
    make_tokenize,
    tokenizer_path,
    train_tokenizer,
)
from model.weights import export_final

log = logging.getLogger("pretrain")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (YAML sections, or section.key=value overrides):\n"
        + config_reference(ExperimentConfig, ("model", "tokenizer", "train", "loader", "features")),
    )
    ap.add_argument(
        "--config", required=True, help="experiment YAML (sections features/model/train...)"
    )
    ap.add_argument(
        "--shards", help="shard set root (holds train/ [val/]); overrides loader.shards"
    )
    ap.add_argument("--out", help="run directory; overrides train.out")
    ap.add_argument(
        "--local_rank", type=int, default=None, help=argparse.SUPPRESS
    )  # set by deepspeed
    ap.add_argument("overrides", nargs="*", help="section.key=value overrides")
    return ap.parse_args(argv)


def fail(msg: str) -> None:
    print(f"pretrain: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def split_dirs(shards: str) -> tuple[str | Path, str | Path | None]:
    """``(train dir, val dir or None)`` of a local or remote set (:func:`train_val_splits`)."""
    try:
        return train_val_splits(shards)
    except (FileNotFoundError, storage.StorageError) as err:  # before any training starts
        fail(str(err))
        raise AssertionError from err


def resolve_tokenizer(
    cfg: ExperimentConfig, train_dir: str | Path, out: Path, rank: int
) -> tuple[TextTokenizer, Path | None]:
    """The text tower's tokenizer (rules: ``model.tokenizer.tokenizer_path``); when none exists
    yet, rank 0 trains one on the training texts into <out>/tokenizer.model."""
    if cfg.model.text.kind != "transformer":  # minilm / hf towers bring their own tokenizer
        return load_tokenizer(cfg.model.text, None), None
    try:
        # (a tokenizer beside remote shards is not fetched: set tokenizer.path for those)
        shards_root = out if storage.is_remote(train_dir) else Path(train_dir).parent
        path, must_train = tokenizer_path(cfg.tokenizer.path, shards_root, out)
        if must_train and rank == 0:
            log.info("no tokenizer in the shard set: training one into %s", path)
            lt = list(iter_shard_texts(train_dir, langs=True))  # balanced as the draws (issue 17)
            train_tokenizer([t for _, t in lt], path, vocab_size=cfg.model.text.vocab_size,
                            langs=[g for g, _ in lt], alpha=cfg.loader.sampling.alpha,
                            lang_tags=cfg.model.text.lang_tags)  # fmt: skip
        dist.barrier()  # every rank: must_train differs between ranks once rank 0 has trained
        return load_tokenizer(cfg.model.text, path), path
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
        raise AssertionError from err


def make_loader(
    cfg: ExperimentConfig, split_dir: Any, tok: TextTokenizer, rank: int, world: int, train: bool
) -> ShardLoader:
    """The loader of one split; the model dictates crop length, padding and tokenization."""
    a = cfg.model.audio
    return ShardLoader.from_config(
        cfg.loader,
        split_dir,
        features=cfg.features,
        tokenize=make_tokenize(tok, cfg.model.text),
        max_frames=a.max_frames,
        batch_size=cfg.train.micro_batch,
        pad_multiple=a.patch_time,
        seed=cfg.train.seed,
        rank=rank,
        world_size=world,
        train=train,
        transcripts=cfg.model.calm.with_transcript,
    )


def main() -> None:
    # ---------------------------------------------------------------- config
    args = parse_args()
    overrides = list(args.overrides)
    overrides += [f"loader.shards={args.shards}"] if args.shards else []
    overrides += [f"train.out={args.out}"] if args.out else []
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        fail(str(err))
    t = cfg.train
    out = Path(t.out)
    train_dir, val_dir = split_dirs(cfg.loader.shards)

    # ---------------------------------------------------------------- distributed init
    rank, world = tr.init_distributed()  # gloo on CPU, NCCL on GPUs; env from the launcher
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    accel = get_accelerator()
    if accel.device_name() != "cpu":
        accel.set_device(local_rank)
    device = torch.device(accel.device_name(local_rank) if accel.device_name() != "cpu" else "cpu")
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    log.info("world size %d, device %s, config %s -> %s", world, device, args.config, out)

    # ---------------------------------------------------------------- data
    tokenizer, tokenizer_path = resolve_tokenizer(cfg, train_dir, out, rank)
    try:
        loader = make_loader(cfg, train_dir, tokenizer, rank, world, train=True)
        val_loader = (
            make_loader(cfg, val_dir, tokenizer, rank, world, train=False)
            if val_dir is not None
            else None
        )
    except (FingerprintMismatch, FileNotFoundError, ValueError, storage.StorageError) as err:
        fail(str(err))
    log.info("train: %d samples in %s; val: %s", loader.num_samples, train_dir, val_dir or "none")

    # ---------------------------------------------------------------- model + engine
    tr.seed_everything(t.seed)  # identical initial weights on every rank
    try:
        model = build_model(cfg.model, cfg.features.n_mels)  # HF towers load from their dirs
        if cfg.model.init_from:  # weights only; a resumed checkpoint below overrides them
            ft.init_weights(model, cfg.model.init_from, strict=cfg.model.init_strict)
        ft.apply_locks(model, t.finetune)
        groups = ft.param_groups(model, t)
    except ValueError as err:  # HFLoadError / InitError / a config the model refuses
        fail(str(err))
    # estimate, for the TFLOP/s (MFU) column; counted on one sample (the model still on the
    # CPU, before the engine) for transformers towers, which the formula does not cover
    m = cfg.model
    flops = (
        tr.flops_per_sample(cfg)
        if m.audio.kind == "patch" and m.text.kind != "hf"
        else tr.measured_flops_per_sample(
            model, cfg.features.n_mels, m.audio.max_frames, m.text.max_len
        )
    )
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=groups, config=tr.make_ds_config(t, world)
    )
    loss_fn = ContrastiveLoss(cfg.model.loss, rank, world)
    dtype = tr.autocast_dtype(t)
    log.info(
        "model: %.2fM parameters (%.2fM trainable), ZeRO-%d, %s",
        n_params / 1e6,
        n_trainable / 1e6,
        t.zero_stage,
        t.precision,
    )

    # ---------------------------------------------------------------- resume
    step = 0
    try:
        ckpt = resume_point(out, t.sync_to, device)
    except storage.StorageError as err:
        fail(f"cannot resume from train.sync_to: {err}")
    if ckpt is not None:
        try:
            state = load_checkpoint(engine, ckpt)
        except UntrustedCheckpoint as err:
            fail(f"not resuming from {out}: {err}")
        step = int(state["step"])
        loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        log.info("resumed from %s (step %d, epoch %d)", ckpt, step, loader.epoch)
    else:
        tr.seed_everything(t.seed + 1000 * rank)  # ranks draw different dropout/augment masks
    metrics = tr.MetricsLog(
        out, enabled=rank == 0, tensorboard=t.tensorboard, resume_step=step if ckpt else None
    )

    def checkpoint() -> Path:
        state = {"step": step, "loader": loader.state_dict(), "rng": rng_state()}
        return save_checkpoint(
            engine,
            out,
            step,
            trainer_state=state,
            cfg=cfg,
            tokenizer_path=tokenizer_path,
            keep_last=t.keep_last,
        )

    def validation() -> dict[str, float]:
        if val_loader is None:
            return {}
        batches = []
        epoch = val_loader.iter_epoch()
        for b in epoch:
            batches.append(b)
            if t.val_batches and len(batches) >= t.val_batches:
                break
        epoch.close()  # stops its DataLoader workers when cut short
        val_loader.reset()  # the same val samples every time
        return tr.validate(engine, batches, device, dtype)

    # ---------------------------------------------------------------- train loop
    seen: dict[str, torch.Tensor] = {}  # the last step's logit scale, for the temperature log

    def recorded(fn: Any) -> Any:
        def loss(**feats: torch.Tensor) -> dict[str, torch.Tensor]:
            seen["scale"] = feats["logit_scale"].detach()
            return fn(**feats)

        return loss

    plain_loss, cached_loss = recorded(loss_fn), recorded(loss_fn.loss_from_features)
    stop = tr.StopFlag()
    batches = iter(loader)
    t_start = time.perf_counter()
    last_saved = step
    engine.train()
    while step < t.max_steps:
        t0 = time.perf_counter()
        wait = 0.0
        audio_s = 0.0
        for _ in range(t.grad_accum_steps):
            tw = time.perf_counter()
            batch = next(batches)
            wait += time.perf_counter() - tw
            audio_s += float(batch["duration_s"].sum())
            inputs = {k: batch[k].to(device, non_blocking=True) for k in INPUT_KEYS if k in batch}
            inputs["mel"] = inputs["mel"].to(dtype)  # float16 from the shards -> the engine's dtype
            groups = loss_groups(batch["groups"], batch["labels"], cfg.model.loss)
            inputs["groups"] = groups.to(device, non_blocking=True)
            # Both steps call engine.step(); DeepSpeed steps the optimizer at the accumulation
            # boundary only. The cache's loss sees already gathered features.
            if t.chunk_size:  # gradient cache: exact global-batch gradients in chunks
                terms = cached_step(engine, inputs, cached_loss, t.chunk_size)
            else:
                terms = plain_step(engine, inputs, plain_loss)
            scale = seen["scale"]
        step += 1
        elapsed = time.perf_counter() - t_start
        over_budget = t.time_budget_s is not None and elapsed >= t.time_budget_s
        # one collective per step: stop requests (any rank), audio seconds, loss (mean over ranks)
        n_signal, n_budget, audio_total, loss_sum = tr.agree(
            [
                float(stop.signal is not None),
                float(over_budget),
                audio_s,
                float(terms["loss"].detach()),
            ],
            device,
        )
        dt = time.perf_counter() - t0
        if rank == 0 and (step % t.log_every == 0 or step == 1 or step == t.max_steps):
            gn = engine.get_global_grad_norm()
            row = {
                "loss": loss_sum / world,
                **{f"loss_{k}": float(v.detach()) for k, v in terms.items() if k != "loss"},
                "temperature": 1.0 / float(scale.detach()),
                "lr": float(engine.get_lr()[0]),
                "grad_norm": float(gn) if gn is not None else None,
                "samples_per_s": t.micro_batch * t.grad_accum_steps * world / dt,
                "model_tflops_per_s": flops
                * t.micro_batch
                * t.grad_accum_steps
                * world
                / dt
                / 1e12,
                "audio_hours_per_s": audio_total / 3600 / dt,
                "data_wait_s": wait,
                "data_wait_frac": wait / dt,
                "epoch": loader.epoch,
                # this rank's skipped-data counters (corrupt/missing shards, bad samples)
                **{f"loader_{k}": v for k, v in loader.stats.items()},
                # this rank's achieved share of samples per corpus and language (issue 17)
                **loader.draw_shares(),
                **tr.memory_stats(),
            }
            metrics.write(step, row)
            log.info(tr.progress_line(step, t.max_steps, row))
        if t.eval_every and step % t.eval_every == 0 and step < t.max_steps:
            val = validation()
            if val:
                metrics.write(step, val)
                log.info("validation at step %d: %s", step, val)
        if n_signal > 0:  # preemption (any rank): checkpoint and leave; a rerun resumes
            checkpoint()
            metrics.close()
            log.info(
                "preempted (%s) at step %d: checkpoint saved, exiting cleanly",
                stop.signal or "signal on another rank",
                step,
            )
            return
        if n_budget > 0:
            log.info("time budget of %.0f s reached at step %d", t.time_budget_s, step)
            break
        if step % t.save_every == 0:
            checkpoint()
            last_saved = step

    # ---------------------------------------------------------------- finish
    if last_saved != step or latest_checkpoint(out) is None:
        checkpoint()
    val = validation()
    if val:
        metrics.write(step, val)
        log.info("final validation: %s", val)
    if rank == 0:
        export_final(
            out,
            latest_checkpoint(out),
            {
                "step": step,
                "world_size": world,
                "zero_stage": t.zero_stage,
                "precision": t.precision,
                "samples_seen": step * t.micro_batch * t.grad_accum_steps * world,
            },
        )
    dist.barrier()
    metrics.close()
    log.info("done: %d steps, outputs in %s", step, out)


if __name__ == "__main__":
    main()
