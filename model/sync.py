"""Checkpoints and exports synced to a bucket (``train.sync_to``), and exports pulled back.

Layout under ``train.sync_to: s3://my-runs/demo`` (``gs://`` alike)::

    checkpoints/step-00000100/<every file of the local checkpoint>
    checkpoints/step-00000100/synced.json   written last: names and sha256 of every file above
    checkpoints/latest                      the newest synced checkpoint's name (after its marker)
    final/<every file of the export>
    final/synced.json                       written last

Atomic from the reader's view: each object commits whole or not at all
(:func:`dataprep.core.storage.upload`), and ``synced.json`` is uploaded only after every file it
names; a re-sync of the same name deletes the marker first. A prefix without ``synced.json`` is
an upload in progress or an interrupted one, never loaded. Files under a prefix that its marker
does not name (left by an earlier sync) are ignored.

Uploads run on rank 0 after the checkpoint's commit marker, inside the save, so the other ranks
wait at the save's last barrier (a save is finished when its copy is in the bucket). The bucket
keeps the newest ``train.sync_keep_last`` checkpoints (default ``train.keep_last``; 0 keeps
all): :func:`prune_synced`. A run whose ``--out`` has no checkpoint newer than the bucket's
(a replaced node, an empty disk) resumes from the bucket: :func:`pull_checkpoint`, called by
``model.checkpoint.resume_point``. :func:`pull` downloads an export (safetensors only: a prefix
without ``model.safetensors`` or with a pickled file is refused) to a local cache and checks
every file's sha256 against the marker.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from dataprep.core import storage
from dataprep.core.atomic import atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

SYNCED = "synced.json"
WRITER = "polyclap"
CACHE_ENV = "POLYCLAP_CACHE"  # where pulled exports live (default ~/.cache/polyclap/models)
# what torch/pickle writes: never downloaded from a bucket (evaluation loads safetensors only)
PICKLED = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


def push_dir(src: Path, uri: str) -> dict[str, Any]:
    """Every file under ``src`` to the same relative key under ``uri``, then ``synced.json``."""
    src = Path(src)
    files = {
        p.relative_to(src).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(src.rglob("*"))
        if p.is_file() and p.name != SYNCED
    }
    marker = storage.join(uri, SYNCED)
    storage.remove(marker)  # a re-sync of this name: incomplete until its marker is back
    t0 = time.perf_counter()
    for rel in files:
        storage.upload(src / rel, storage.join(uri, *rel.split("/")))
    meta = {"writer": WRITER, "source": str(src), "time": time.time(), "files": files}
    storage.write_json(marker, meta)
    size = sum(f["bytes"] for f in files.values())
    log.info(
        "synced %s to %s (%d files, %.1f MB, %.1fs)",
        src, uri, len(files), size / 1e6, time.perf_counter() - t0,
    )  # fmt: skip
    return meta


def sync_checkpoint(ckpt: Path, sync_to: str) -> None:
    """A committed checkpoint directory to ``<sync_to>/checkpoints/<tag>``, then ``latest``."""
    root = storage.join(sync_to, ckpt.parent.name)
    push_dir(ckpt, str(storage.join(root, ckpt.name)))
    storage.write_bytes(storage.join(root, "latest"), ckpt.name.encode())


def sync_target(cfg: Any) -> str | None:
    """``train.sync_to`` of an ExperimentConfig (or of its config.json's tree), None if unset."""
    if isinstance(cfg, dict):
        return (cfg.get("train") or {}).get("sync_to")
    return getattr(getattr(cfg, "train", None), "sync_to", None)


def _cache_dir(uri: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    root = cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "polyclap" / "models"
    return Path(root) / hashlib.sha256(uri.encode()).hexdigest()[:16]


def _read_marker(prefix: str) -> dict[str, Any]:
    """``prefix``'s ``synced.json``, refused unless this project wrote it and its file names
    are safe relative paths; FileNotFoundError when there is none."""
    try:
        meta = storage.read_json(storage.join(prefix, SYNCED))
    except ValueError as err:
        raise storage.StorageError(f"{prefix}/{SYNCED}: not JSON ({err})") from None
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or meta.get("writer") != WRITER or not isinstance(files, dict):
        raise storage.StorageError(f"{prefix}/{SYNCED}: not written by polyclap; refused")
    for rel in files:
        norm = posixpath.normpath(rel)
        if rel.startswith("/") or norm.startswith("..") or norm != rel:
            raise storage.StorageError(f"{prefix}/{SYNCED}: unsafe file name {rel!r}; refused")
    return meta


def _marker(uri: str) -> tuple[str, dict[str, Any]]:
    """The synced prefix (``uri`` or a run's ``uri/final``) and its marker."""
    for prefix in (uri, str(storage.join(uri, "final"))):
        try:
            return prefix, _read_marker(prefix)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(
        f"{uri}: no {SYNCED} here nor under final/ (not a synced export, or its upload is "
        f"unfinished: train.sync_to writes {SYNCED} last)"
    )


def _checked_files(prefix: str, files: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """An export's files (named safely: :func:`_read_marker`): safetensors, nothing pickled."""
    if "model.safetensors" not in files:
        raise storage.StorageError(
            f"{prefix}: not an export (no model.safetensors in {SYNCED}): only safetensors "
            f"exports are loaded from a bucket (a synced DeepSpeed checkpoint is for resuming: "
            f"download it and run jobs/export.py)"
        )
    for rel in files:
        if rel.lower().endswith(PICKLED):
            raise storage.StorageError(
                f"{prefix}/{rel}: a pickled file in a synced export is never downloaded; refused"
            )
    return files


def local_copy(loc: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None) -> Path:
    """A local model directory as a Path; a remote URI pulled first (:func:`pull`)."""
    return pull(str(loc), cache_dir) if storage.is_remote(loc) else Path(loc)


def pull(uri: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A synced export (``<sync_to>/final`` or the ``sync_to`` root itself) as a local directory
    in the cache, every file's sha256 checked against ``synced.json``; files already cached
    with the right digest are not downloaded again."""
    uri = str(storage.location(uri))
    prefix, meta = _marker(uri)
    files = _checked_files(prefix, meta["files"])
    dest = _cache_dir(prefix, cache_dir)
    _fetch_files(prefix, files, dest)
    return dest


def _fetch_files(prefix: str, files: dict[str, dict[str, Any]], dest: Path) -> None:
    """Every file a marker names into ``dest``, each checked against its sha256 (files already
    there with the right digest are kept); files in ``dest`` the marker does not name removed."""
    fetched = 0
    for rel, rec in files.items():
        target = dest / rel
        if target.is_file() and sha256_file(target) == rec.get("sha256"):
            continue
        remote = storage.join(prefix, *rel.split("/"))
        data, digest = storage.fetch(remote)
        if digest != rec.get("sha256"):
            raise storage.StorageError(
                f"{remote}: sha256 differs from {SYNCED} (changed or corrupt since synced)"
            )
        atomic_write_bytes(target, data)
        fetched += 1
    for p in sorted(dest.rglob("*")):  # left by an older sync: a stale file would be read
        if p.is_file() and p.relative_to(dest).as_posix() not in files:
            p.unlink()
    log.info("%s: %d of %d files downloaded to %s", prefix, fetched, len(files), dest)


def synced_latest(sync_to: str) -> str | None:
    """The name of the newest checkpoint synced under ``sync_to``, None when there is none."""
    try:
        return storage.read_bytes(storage.join(sync_to, "checkpoints", "latest")).decode().strip()
    except FileNotFoundError:
        return None


def pull_checkpoint(sync_to: str, tag: str, dest: Path, marker: str) -> Path:
    """The synced checkpoint ``tag`` into the local folder ``dest`` (``<out>/checkpoints/<tag>``),
    every file checked against ``synced.json``. Downloaded beside ``dest`` (a folder per host,
    so nodes sharing ``--out`` never write into one; a rerun keeps what a killed pull already
    checked) and renamed into place whole, so an interrupted pull never leaves a checkpoint that
    looks complete; if another node's pull got there first (``dest`` holds the commit
    ``marker``), ours is dropped. Resuming then verifies it against its own commit marker, as
    for a local run (the bucket is the run's own, trusted as its ``--out`` is: DeepSpeed's
    files are pickles)."""
    prefix = str(storage.join(sync_to, "checkpoints", tag))
    try:
        files = _read_marker(prefix)["files"]
    except FileNotFoundError:
        raise storage.StorageError(
            f"{prefix}: no {SYNCED} (the upload of this checkpoint did not finish)"
        ) from None
    tmp = dest.with_name(f"{dest.name}.pulling-{socket.gethostname()}")
    _fetch_files(prefix, files, tmp)
    if dest.exists() and not (dest / marker).is_file():
        shutil.rmtree(dest, ignore_errors=True)  # a local save of this step cut short: garbage
    try:
        tmp.rename(dest)
    except OSError:
        if not (dest / marker).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another node sharing --out finished first
    return dest


def prune_synced(sync_to: str, keep: set[str], is_checkpoint: Any) -> list[str]:
    """Remove the synced checkpoints under ``sync_to`` that ``is_checkpoint(name)`` accepts and
    ``keep`` does not name: the marker first (a reader stops seeing the checkpoint at once),
    then its files. Returns the names removed."""
    root = storage.join(sync_to, "checkpoints")
    doomed = [n for n in storage.folders(root) if is_checkpoint(n) and n not in keep]
    for name in doomed:
        storage.remove(storage.join(root, name, SYNCED))
        storage.remove_tree(storage.join(root, name))
        log.info("removed synced checkpoint %s", storage.join(root, name))
    return doomed
