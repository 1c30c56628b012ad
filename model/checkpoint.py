"""Training checkpoints: save, find, verify and resume (exact, same world size).

Layout under a run's ``out`` directory::

    checkpoints/step-00000100/      DeepSpeed files (model/optimizer/scheduler, ZeRO partitions)
        trainer_state_rank{r}.json  per rank: step, loader position, RNG states (JSON, no pickle)
        config.json                 the ExperimentConfig
        tokenizer.model             copy of the sentencepiece model (if the text tower uses it)
        complete.json               written last, after every rank has saved: the commit marker
    checkpoints/latest              name of the newest complete checkpoint (atomic rename)
    final/                          the export (``model.weights``): model.safetensors, config.json,
                                    tokenizer.model, meta.json

With ``train.sync_to`` set, rank 0 copies each committed checkpoint and the final export to the
bucket (``model.sync``: files first, ``synced.json`` last).

A checkpoint directory without ``complete.json`` (a save interrupted by SIGKILL) is never
loaded; ``latest`` only moves after the commit marker exists.

Trust. DeepSpeed pickles its model/optimizer files, and resuming lets DeepSpeed load them: a
resumed run directory is TRUSTED (point ``--out`` only at a run this project wrote). The
marker records ``writer: polyclap`` and the sha256 of every file of the checkpoint;
:func:`verify_checkpoint` refuses a directory without it, with a changed, missing or extra file,
before anything in it is read. Evaluation, inference and export never unpickle: they read
``model.safetensors`` or DeepSpeed's files with ``torch.load(weights_only=True)``
(``model.weights``). A checksum shows the files are the ones this project wrote there, not who
wrote the directory: it guards against a swapped or planted file, not against someone able to
write the marker too.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dataprep.core.atomic import atomic_write_bytes, atomic_write_json, sha256_file
from dataprep.core.storage import StorageError, folders, join
from model.sync import prune_synced, pull_checkpoint, sync_checkpoint, sync_target, synced_latest

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
FINAL = "final"
CONFIG = "config.json"
TOKENIZER = "tokenizer.model"
COMPLETE = "complete.json"
WRITER = "polyclap"
MARKER_FORMAT = 2  # 1: no writer/files (before checksums); refused
_TAG = re.compile(r"^step-(\d{8})$")


class UntrustedCheckpoint(ValueError):
    """A checkpoint directory this project did not write, or whose files changed since."""


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def config_json(cfg: Any) -> bytes:
    return json.dumps(cfg.model_dump(mode="json"), indent=1, ensure_ascii=False).encode()


# --------------------------------------------------------------------------------------------
# RNG state as JSON (exact resume without a pickle)
# --------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as plain JSON values."""
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": [version, list(state), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state().tolist()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    version, st, gauss = state["python"]
    random.setstate((version, tuple(st), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


# --------------------------------------------------------------------------------------------
# Save / verify / resume
# --------------------------------------------------------------------------------------------


def _file_digests(ckpt: Path) -> dict[str, str]:
    return {
        p.relative_to(ckpt).as_posix(): sha256_file(p)
        for p in sorted(ckpt.rglob("*"))
        if p.is_file() and p.name != COMPLETE
    }


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
    """Collective: every rank calls it. Returns the checkpoint directory.

    ``trainer_state`` must be JSON-serializable (use :func:`rng_state` for the RNG streams).
    """
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
    atomic_write_json(ckpt / f"trainer_state_rank{rank}.json", trainer_state)
    if rank == 0:
        atomic_write_bytes(ckpt / CONFIG, config_json(cfg))
        if tokenizer_path is not None:
            atomic_write_bytes(ckpt / TOKENIZER, Path(tokenizer_path).read_bytes())
    _barrier()  # every rank's files are on disk before the commit marker
    if rank == 0:
        atomic_write_json(
            ckpt / COMPLETE,
            {
                "writer": WRITER,
                "format": MARKER_FORMAT,
                "step": step,
                "world_size": world,
                "time": time.time(),
                "files": _file_digests(ckpt),
            },
        )
        atomic_write_bytes(root / LATEST, tag.encode())
        _prune(root, keep_last, keep=tag)
        if _sync(ckpt, sync_target(cfg)):
            _prune_synced(cfg, keep_last, tag)
    _barrier()
    log.info("saved checkpoint %s", ckpt)
    return ckpt


def _sync(ckpt: Path, sync_to: str | None) -> bool:
    """``train.sync_to``: the committed checkpoint to the bucket (model/sync.py). A failed sync
    does not stop training: the local checkpoint is whole and the next save syncs again."""
    if not sync_to:
        return False
    try:
        sync_checkpoint(ckpt, sync_to)
    except (StorageError, OSError) as err:
        log.error("checkpoint %s not synced to %s (training goes on): %s", ckpt, sync_to, err)
        return False
    return True


def _prune_synced(cfg: Any, keep_last: int, tag: str) -> None:
    """The bucket keeps the newest ``train.sync_keep_last`` synced checkpoints (None: as many as
    ``keep_last``; 0: all), always the one just synced. A failed prune is retried next save."""
    sync_to = sync_target(cfg)
    n = getattr(getattr(cfg, "train", None), "sync_keep_last", None)
    n = keep_last if n is None else n
    if not sync_to or n <= 0:
        return
    try:
        names = sorted(x for x in folders(join(sync_to, CHECKPOINTS)) if _TAG.match(x))
        keep = set(names[-max(n, 1) :]) | {tag}
        prune_synced(sync_to, keep, lambda name: bool(_TAG.match(name)))
    except (StorageError, OSError) as err:
        log.error(
            "old synced checkpoints under %s not removed (next save retries): %s", sync_to, err
        )


def resume_point(out: Path, sync_to: str | None, device: Any = "cpu") -> Path | None:
    """Collective: the checkpoint a run resumes from. With ``train.sync_to``, a checkpoint in the
    bucket newer than any under ``out`` (a replaced node, an empty disk) is downloaded first, by
    each node's local rank 0, checked file by file (``model.sync.pull_checkpoint``); it is then
    verified like a local one by :func:`load_checkpoint`. A bucket that cannot be read raises
    :class:`StorageError` (a run must not silently restart from step 0 and overwrite it)."""
    error: StorageError | None = None
    if sync_to and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        try:
            _pull_newer(out, sync_to)
        except StorageError as err:
            error = err
    if dist.is_initialized():  # every rank learns that a pull failed, none trains on
        flag = torch.tensor([0 if error is None else 1], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and error is None:
            error = StorageError(f"another node could not download its checkpoint from {sync_to}")
    if error is not None:
        raise error
    return latest_checkpoint(out)


def _pull_newer(out: Path, sync_to: str) -> None:
    here = latest_checkpoint(out)
    tag = synced_latest(sync_to)
    if tag is None or not _TAG.match(tag) or (here is not None and here.name >= tag):
        return
    pull_checkpoint(sync_to, tag, out / CHECKPOINTS / tag, COMPLETE)
    atomic_write_bytes(out / CHECKPOINTS / LATEST, tag.encode())
    log.info("downloaded checkpoint %s from %s to resume from", tag, sync_to)


def verify_checkpoint(ckpt: Path) -> dict[str, Any]:
    """The marker of a checkpoint this project wrote, every file unchanged; else
    :class:`UntrustedCheckpoint`. Reads nothing of the checkpoint but the marker and the bytes
    it hashes."""
    try:
        meta = json.loads((ckpt / COMPLETE).read_text())
    except (OSError, ValueError) as err:
        raise UntrustedCheckpoint(f"{ckpt}: no readable {COMPLETE} commit marker ({err})") from None
    if (
        not isinstance(meta, dict)
        or meta.get("writer") != WRITER
        or not isinstance(meta.get("files"), dict)
    ):
        raise UntrustedCheckpoint(
            f"{ckpt}: {COMPLETE} was not written by polyclap (no writer/file checksums: another "
            f"tool, a hand-made directory, or a checkpoint from before checksums); refusing to "
            "load "
            f"its pickled files"
        )
    found = _file_digests(ckpt)
    want: dict[str, str] = meta["files"]
    problems = [f"missing {n}" for n in sorted(set(want) - set(found))]
    problems += [f"not written by this save: {n}" for n in sorted(set(found) - set(want))]
    problems += [
        f"changed since saved: {n}" for n in sorted(set(want) & set(found)) if want[n] != found[n]
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; ... ({len(problems)} in all)" if len(problems) > 5 else ""
        )
        raise UntrustedCheckpoint(f"{ckpt}: refusing to load: {shown}")
    return meta


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
    """The newest complete checkpoint of a run, or None (not yet verified: see
    :func:`verify_checkpoint`)."""
    root = out / CHECKPOINTS
    marker = root / LATEST
    if marker.is_file():
        ckpt = root / marker.read_text().strip()
        if (ckpt / COMPLETE).is_file():
            return ckpt
    if root.is_dir():  # marker lost: fall back to the newest complete directory
        tags = sorted(
            p.name for p in root.iterdir() if _TAG.match(p.name) and (p / COMPLETE).is_file()
        )
        if tags:
            return root / tags[-1]
    return None


def load_checkpoint(engine: Any, ckpt: Path) -> dict[str, Any]:
    """Collective: restore engine state from ``ckpt``; returns this rank's trainer state.

    The directory is verified first (:func:`verify_checkpoint`); then DeepSpeed loads its own
    (pickled) files: resuming trusts a run directory this project wrote.
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    meta = verify_checkpoint(ckpt)
    if meta["world_size"] != world:
        raise RuntimeError(
            f"{ckpt} was saved by {meta['world_size']} ranks, this run has {world}: an exact "
            "resume "
            f"(loader position, RNG streams) needs the same world size"
        )
    path, _ = engine.load_checkpoint(
        str(ckpt.parent), tag=ckpt.name, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load {ckpt}")
    return json.loads((ckpt / f"trainer_state_rank{rank}.json").read_text())
