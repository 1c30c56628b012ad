"""Building into an object store (``build.out: s3://...`` or ``gs://...``): scratch + uploads.

Every build step runs as for a local ``out``, on a local scratch folder (:func:`workdir`:
``build.scratch``, default ``<tmp>/polyclap-scratch/<sha1 of the URI>``), and this module mirrors
it to the bucket in an order that keeps the remote set consistent at every instant:

1. ``plan.json`` of an earlier run is fetched first (a rerun with another config is refused as
   for a local out); ``plan.json`` and ``manifest.parquet`` are uploaded before any shard task
   runs. A task on a node without the manifest fetches it (no shared filesystem needed).
2. a shard task writes its tar to its node's scratch, uploads it, then uploads its part record,
   then deletes the local tar (:func:`publish_shard`). An object appears whole or not at all
   (:mod:`dataprep.core.storage`: single PUT or multipart completion), so a killed upload leaves
   no object under the final name and no part record.
3. a rerun lists the bucket (:func:`done_shards`): a shard is done when its part record is there
   and its tar's listed size equals the size that record holds; the others are redone.
4. finalize runs on local copies of the part records (:func:`pull_parts`); :func:`publish_final`
   then uploads each split's tables and ``wids-index.json``, then every ``shards.json``, then
   ``build.json`` last.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

from dataprep.build.finalize import PARTS, part_path
from dataprep.build.manifest import MANIFEST
from dataprep.build.plan import PLAN_JSON, ShardTask
from dataprep.core import shards, storage
from dataprep.core.config import DataConfig

log = logging.getLogger("polyclap.build")

EVAL_REJECTS = "eval_rejects.parquet"


def workdir(cfg: DataConfig, out: str) -> Path:
    """The local scratch folder of a remote ``out`` (same path on every node)."""
    base = Path(cfg.build.scratch or Path(tempfile.gettempdir()) / "polyclap-scratch")
    return base / hashlib.sha1(out.encode()).hexdigest()[:16]


def _rel(work: Path, path: Path) -> str:
    return path.relative_to(work).as_posix()


def push(work: Path, out: str, *files: Path) -> None:
    for f in files:
        storage.upload(f, storage.join(out, *_rel(work, f).split("/")))


def pull_plan(out: str, work: Path) -> None:
    """The remote ``plan.json`` (if any) replaces the scratch one, so the plan check sees it."""
    work.mkdir(parents=True, exist_ok=True)
    try:
        storage.download(storage.join(out, PLAN_JSON), work / PLAN_JSON)
    except FileNotFoundError:
        (work / PLAN_JSON).unlink(missing_ok=True)


def push_plan(work: Path, out: str) -> None:
    push(work, out, work / PLAN_JSON, work / MANIFEST)


def local_manifest(out: str, work: Path) -> Path:
    """The manifest on this node: the driver wrote it here; other nodes fetch it once."""
    path = work / MANIFEST
    if not path.is_file():
        storage.download(storage.join(out, MANIFEST), path)
    return path


def publish_shard(work: Path, out: str, split: str, name: str) -> None:
    """Upload a finished shard: its tar first, its part record (the done marker) second."""
    tar, part = work / split / name, part_path(work, split, name)
    push(work, out, tar, part)
    tar.unlink()  # scratch holds at most the shards in flight on this node


def done_shards(out: str, work: Path, tasks: list[ShardTask]) -> set[tuple[str, str]]:
    """``(split, name)`` of the shards finished in the bucket; their part records are copied
    to scratch (finalize reads them there)."""
    done: set[tuple[str, str]] = set()
    for split in sorted({t.split for t in tasks}):
        tars = storage.listing(storage.join(out, split))
        parts = storage.listing(storage.join(out, split, PARTS))
        for t in (t for t in tasks if t.split == split):
            part_name = t.name.removesuffix(".tar") + ".json"
            if part_name not in parts or t.name not in tars:
                continue
            uri = storage.join(out, split, PARTS, part_name)
            part = storage.read_json(uri)
            if part.get("entry", {}).get("bytes") == tars[t.name]:
                storage.download(uri, part_path(work, split, t.name))
                done.add((split, t.name))
    return done


def pull_parts(out: str, work: Path, tasks: list[ShardTask]) -> None:
    """Part records written on other nodes, to scratch (this node's own are already there)."""
    for t in tasks:
        local = part_path(work, t.split, t.name)
        if not local.is_file():
            parts_dir = storage.join(out, t.split, PARTS)
            storage.download(storage.join(parts_dir, local.name), local)


def publish_final(work: Path, out: str, splits: list[str], *extra: Path) -> None:
    """Tables and indexes per split (and ``extra`` files: the dataset card), then each
    ``shards.json``, then ``build.json`` last."""
    for split in splits:
        d = work / split
        push(work, out, d / shards.INDEX, d / shards.REJECTS, d / "wids-index.json")
    if (work / EVAL_REJECTS).is_file():
        push(work, out, work / EVAL_REJECTS)
    push(work, out, *extra)
    push(work, out, *(work / s / shards.SHARDS_JSON for s in splits))
    push(work, out, work / shards.BUILD_JSON)
    log.info("published the shard set to %s", out)
