"""A shard split's bookkeeping (``shards.json``), its feature check, and the epoch plan."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dataprep.core import storage
from dataprep.core.config import FeatureConfig
from dataprep.core.features import check_fingerprint, feature_fingerprint
from dataprep.core.sample import META
from dataprep.core.shards import BUILD_JSON, read_shards_json
from dataprep.core.shards import check_listing as check_split_listing
from dataprep.core.tario import first_member, iter_tar_files, split_member

log = logging.getLogger("dataprep.loader")


@dataclass(frozen=True)
class ShardRecord:
    """What ``shards.json`` says of one tar: the reader checks the file against it."""

    name: str
    samples: int
    size_bytes: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class ShardSet:
    split_dir: str | Path  # a local folder or a remote URI (dataprep.core.storage)
    shards: tuple[tuple[str, int], ...]  # (file name, samples) in shards.json order
    exclude: frozenset[str] = frozenset()
    records: dict[str, ShardRecord] = field(default_factory=dict, compare=False)

    @classmethod
    def open(cls, split_dir: str | os.PathLike[str]) -> ShardSet:
        split_dir = storage.location(split_dir)
        meta = read_shards_json(split_dir)  # clear FileNotFoundError when not a shard set
        entries = meta.get("shards", [])
        if not entries:
            raise ValueError(f"{split_dir}/shards.json lists no shards")
        records = {
            e["name"]: ShardRecord(e["name"], int(e["samples"]), e.get("bytes"), e.get("sha256"))
            for e in entries
        }
        unchecked = [r.name for r in records.values() if not r.sha256]
        if unchecked:
            log.warning(
                "%s: shards.json has no sha256 for %d shard(s) (%s...): they are read unchecked",
                split_dir, len(unchecked), unchecked[0],
            )  # fmt: skip
        if storage.is_remote(split_dir):
            check_listing(split_dir, records)
        shards = tuple((e["name"], int(e["samples"])) for e in entries)
        return cls(split_dir, shards, frozenset(meta.get("exclude", ())), records)

    def path(self, name: str) -> str | Path:
        return storage.join(self.split_dir, name)

    @property
    def num_samples(self) -> int:
        return sum(n for _, n in self.shards) - len(self.exclude)

    def record(self, name: str) -> ShardRecord:
        return self.records.get(name) or ShardRecord(name, dict(self.shards)[name])


def check_listing(split_dir: str | Path, records: dict[str, ShardRecord]) -> None:
    """A remote set's listing against shards.json, up front (``core.shards.check_listing``).
    (Locally a missing shard is a counted skip.)"""
    check_split_listing(split_dir, {r.name: r.size_bytes for r in records.values()})


def _build_fields(build: dict[str, Any]) -> dict[str, Any] | None:
    for k in ("feature_fields", "fingerprint_fields"):
        if isinstance(build.get(k), dict):
            return build[k]
    feat = build.get("features") or build.get("feature")
    return feat if isinstance(feat, dict) else None


def _first_remote_member(uri: str, ext: str) -> bytes | None:
    # the first sample's members lie in the first few KB: read a head, not the whole tar
    head = storage.read_head(uri, 1 << 20)
    f = io.BytesIO(head)
    for name, size in iter_tar_files(f):
        if split_member(name)[1] == ext:
            data = f.read(size)
            return data if len(data) == size else None
    return None


def _first_meta(path: str | Path) -> dict[str, Any] | None:
    try:
        if storage.is_remote(path):
            data = _first_remote_member(str(path), META)
        else:
            data = first_member(path, META)
        return json.loads(data) if data is not None else None
    except (OSError, tarfile.TarError, ValueError, EOFError) as err:  # reader reports damage later
        log.warning("cannot read %s for the fingerprint check: %s", path, err)
    return None


def check_shard_features(shard_set: ShardSet, features: FeatureConfig) -> str:
    """Refuse shards featurized differently (:func:`check_fingerprint`); returns the expected
    fingerprint. Checks ``<root>/build.json`` (fingerprint + the fields it was computed from, so
    the message names what differs) and the first readable sample's ``feature_fingerprint``.
    """
    expected = feature_fingerprint(features)
    found = False
    build_path = storage.join(storage.parent(shard_set.split_dir), BUILD_JSON)
    if storage.exists(build_path):
        build = storage.read_json(build_path)
        if build.get("feature_fingerprint"):
            found = True
            check_fingerprint(
                features, build["feature_fingerprint"], where=str(build_path),
                fields=_build_fields(build), expected=expected,
            )  # fmt: skip
    for name, _ in shard_set.shards:
        meta = _first_meta(shard_set.path(name))
        if meta is not None:
            if meta.get("feature_fingerprint"):
                found = True
                where = f"{shard_set.path(name)} (first sample)"
                check_fingerprint(
                    features, meta["feature_fingerprint"], where=where, expected=expected
                )
            break
    if not found:
        log.warning(
            "%s: no feature fingerprint recorded; cannot verify features", shard_set.split_dir
        )
    return expected


def even_slice(n: int, parts: int, i: int) -> tuple[int, int]:
    return i * n // parts, (i + 1) * n // parts


def epoch_segments(
    shards: tuple[tuple[str, int], ...],
    *,
    epoch: int,
    seed: int,
    shuffle: bool,
    rank: int,
    world_size: int,
    worker: int,
    num_workers: int,
) -> list[tuple[str, int, int]]:
    """``[(shard name, lo, hi)]``: the sample positions one worker of one rank reads in an epoch."""
    order = np.arange(len(shards))
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(len(shards))
    total = sum(n for _, n in shards)
    r_lo, r_hi = even_slice(total, world_size, rank)
    w_lo, w_hi = even_slice(r_hi - r_lo, num_workers, worker)
    w_lo, w_hi = r_lo + w_lo, r_lo + w_hi
    out = []
    start = 0
    for i in order:
        name, n = shards[int(i)]
        lo, hi = max(w_lo, start), min(w_hi, start + n)
        if lo < hi:
            out.append((name, lo - start, hi - start))
        start += n
    return out
