"""Training checkpoints (resume) and the consolidated fp32 export (inference/eval).

Layout under a run's ``out`` directory::

    checkpoints/step-00000100/      DeepSpeed files (model/optimizer/scheduler, ZeRO partitions)
        trainer_state_rank{r}.pt    per rank: step, loader position, RNG states
        config.yaml                 the ExperimentConfig
        tokenizer.model             copy of the sentencepiece model (if the text tower uses it)
        complete.json               written last, after every rank has saved: the commit marker
    checkpoints/latest              name of the newest complete checkpoint (atomic rename)
    final/                          model.pt (fp32 state dict), config.yaml, tokenizer.model,
                                    meta.json

A checkpoint directory without ``complete.json`` (a save interrupted by SIGKILL) is never
loaded; ``latest`` only moves after the commit marker exists. :func:`load_for_eval` accepts the
``final`` directory, a run directory, a ``checkpoints`` directory or one checkpoint directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from dataprep.core.atomic import atomic_path, atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
FINAL = "final"
CONFIG_YAML = "config.yaml"
TOKENIZER = "tokenizer.model"
WEIGHTS = "model.pt"
COMPLETE = "complete.json"
_TAG = re.compile(r"^step-(\d{8})$")


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def config_yaml(cfg: Any) -> bytes:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True).encode()


def save_checkpoint(
    engine: Any,
    out: Path,
    step: int,
    *,
    trainer_state: dict[str, Any],
    cfg: Any,
    tokenizer_path: Path | None,
    keep_last: int,
) -> Path:
    """Collective: every rank calls it. Returns the checkpoint directory."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    root = out / CHECKPOINTS
    tag = tag_for(step)
    ckpt = root / tag
    if rank == 0 and ckpt.exists():
        (ckpt / COMPLETE).unlink(missing_ok=True)  # re-saving a step: not complete until redone
    _barrier()
    engine.save_checkpoint(str(root), tag=tag, client_state={"step": step}, save_latest=False)
    ckpt.mkdir(parents=True, exist_ok=True)
    _atomic_torch_save(trainer_state, ckpt / f"trainer_state_rank{rank}.pt")
    if rank == 0:
        atomic_write_bytes(ckpt / CONFIG_YAML, config_yaml(cfg))
        if tokenizer_path is not None:
            atomic_write_bytes(ckpt / TOKENIZER, Path(tokenizer_path).read_bytes())
    _barrier()  # every rank's files are on disk before the commit marker
    if rank == 0:
        atomic_write_json(ckpt / COMPLETE, {"step": step, "world_size": world, "time": time.time()})
        atomic_write_bytes(root / LATEST, tag.encode())
        _prune(root, keep_last, keep=tag)
    _barrier()
    log.info("saved checkpoint %s", ckpt)
    return ckpt


def _prune(root: Path, keep_last: int, keep: str) -> None:
    tags = sorted(p.name for p in root.iterdir() if p.is_dir() and _TAG.match(p.name))
    complete = [t for t in tags if (root / t / COMPLETE).is_file()]
    doomed = set(complete[: max(0, len(complete) - max(keep_last, 1))])
    # interrupted saves older than the newest complete one are garbage too
    doomed |= {t for t in tags if t not in complete and t < keep}
    for t in sorted(doomed - {keep}):
        shutil.rmtree(root / t, ignore_errors=True)
        log.info("removed old checkpoint %s", root / t)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    root = out / CHECKPOINTS
    marker = root / LATEST
    if marker.is_file():
        ckpt = root / marker.read_text().strip()
        if (ckpt / COMPLETE).is_file():
            return ckpt
    if root.is_dir():  # marker lost: fall back to the newest complete directory
        tags = sorted(p.name for p in root.iterdir() if _TAG.match(p.name) and (p / COMPLETE).is_file())
        if tags:
            return root / tags[-1]
    return None


def load_checkpoint(engine: Any, ckpt: Path) -> dict[str, Any]:
    """Collective: restore engine state from ``ckpt``; returns this rank's trainer state."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    meta = json.loads((ckpt / COMPLETE).read_text())
    if meta["world_size"] != world:
        raise RuntimeError(
            f"{ckpt} was saved by {meta['world_size']} ranks, this run has {world}: an exact resume "
            f"(loader position, RNG streams) needs the same world size"
        )
    path, _ = engine.load_checkpoint(
        str(ckpt.parent), tag=ckpt.name, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load {ckpt}")
    return torch.load(ckpt / f"trainer_state_rank{rank}.pt", map_location="cpu", weights_only=False)


# --------------------------------------------------------------------------------------------
# Consolidated fp32 weights
# --------------------------------------------------------------------------------------------


def consolidated_state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    """Full fp32 model weights from one DeepSpeed checkpoint directory (any ZeRO stage)."""
    if any(ckpt.glob("zero_pp_rank_*_optim_states.pt")):
        # ZeRO 1/2/3: the fp32 master weights live in the optimizer partitions
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
    else:
        states = torch.load(ckpt / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        sd = states["module"]
    return {k: (v.float() if v.is_floating_point() else v).contiguous().clone() for k, v in sd.items()}


def export_final(out: Path, ckpt: Path, meta: dict[str, Any]) -> Path:
    """Rank 0: write ``<out>/final`` (fp32 weights + config + tokenizer) atomically."""
    final = out / FINAL
    tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=out))
    try:
        torch.save(consolidated_state_dict(ckpt), tmp / WEIGHTS)
        shutil.copyfile(ckpt / CONFIG_YAML, tmp / CONFIG_YAML)
        if (ckpt / TOKENIZER).is_file():
            shutil.copyfile(ckpt / TOKENIZER, tmp / TOKENIZER)
        atomic_write_json(tmp / "meta.json", {**meta, "source_checkpoint": str(ckpt)})
        if final.exists():
            old = out / f".final-old-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported fp32 weights to %s", final)
    return final


def _resolve(path: Path) -> Path:
    """A directory holding config.yaml + (model.pt | DeepSpeed files)."""
    if (path / WEIGHTS).is_file() or (path / COMPLETE).is_file():
        return path
    if (path / FINAL / WEIGHTS).is_file():
        return path / FINAL
    run = path.parent if path.name == CHECKPOINTS else path
    ckpt = latest_checkpoint(run)
    if ckpt is not None:
        return ckpt
    raise FileNotFoundError(
        f"{path}: no model here (expected a final/ export with {WEIGHTS}, a run directory with "
        f"{CHECKPOINTS}/, or a checkpoint directory with {COMPLETE})"
    )


def load_for_eval(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[Any, Any, Any]:
    """``(model in eval mode, ExperimentConfig, tokenizer)`` from an export or a checkpoint.

    The tokenizer has ``encode_batch(texts, max_len) -> (ids, mask)``; for ``text.kind: minilm``
    it is the packaged MiniLM WordPiece tokenizer behind the same interface.
    """
    from dataprep.core.config import ConfigError
    from model.clap import build_model
    from model.config import ExperimentConfig, load_config
    from model.tokenizer import load_tokenizer

    d = _resolve(Path(path))
    try:
        cfg = load_config(d / CONFIG_YAML)
    except ConfigError as err:
        # A checkpoint outlives schema changes in sections evaluation does not use (build.*):
        # keep what defines the model and its inputs, and say what was dropped.
        tree = yaml.safe_load((d / CONFIG_YAML).read_text())
        kept = {k: tree[k] for k in ("name", "features", "model") if k in tree}
        cfg = ExperimentConfig.model_validate(kept)
        log.warning("%s: loaded only features/model sections (%s)", d / CONFIG_YAML, str(err).splitlines()[-1].strip())
    sd = torch.load(d / WEIGHTS, map_location="cpu", weights_only=True) if (d / WEIGHTS).is_file() else consolidated_state_dict(d)
    model = build_model(cfg.model, cfg.features.n_mels)
    model.load_state_dict(sd, strict=True)
    model.to(device).eval()
    tok = load_tokenizer(cfg.model.text, d / TOKENIZER)
    return model, cfg, tok
