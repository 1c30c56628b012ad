"""The shard-set bookkeeping: file names, ``shards.json``, and verification of a split.

Layout (ARCHITECTURE.md)::

    out/<split>/shard-000000.tar    written to a temp name, fsynced, renamed
    out/<split>/shards.json         {"shards": [{name, samples, bytes, sha256}], ...} (last)
    out/<split>/index.parquet       one row per sample
    out/<split>/rejects.parquet     one row per rejected input
    out/build.json                  config, feature fingerprint, versions, counts, timings

Writing and reading the tars themselves is :mod:`dataprep.core.tario`; atomic writes and
``sha256_file`` are :mod:`dataprep.core.atomic`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from dataprep.core import parquet, storage
from dataprep.core.atomic import sha256_file
from dataprep.core.sample import SPLITS
from dataprep.core.tario import decode_members, iter_tar_range

log = logging.getLogger(__name__)

SHARDS_JSON = "shards.json"
INDEX = "index.parquet"
REJECTS = "rejects.parquet"
BUILD_JSON = "build.json"


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


def read_shards_json(split_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Load ``<split_dir>/shards.json`` (a local folder or a remote URI); a clear error when the
    location is not a shard set."""
    p = storage.join(split_dir, SHARDS_JSON)
    try:
        return json.loads(storage.read_bytes(p))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FileNotFoundError(
            f"{split_dir} is not a finished shard set: {SHARDS_JSON} is missing "
            f"(build it with `python pipelines/build_shards.py --config ...`)"
        ) from None


def check_listing(split_dir: str | os.PathLike[str], sizes: dict[str, int | None]) -> None:
    """A remote split is listed once before use (``sizes``: shard name -> the bytes shards.json
    records, None when unrecorded): a shard that shards.json names but the bucket lacks, or
    holds with another size, is a broken upload or a wrong prefix, refused up front (ValueError
    naming the URI) rather than skipped shard by shard. Used by the loader and the report."""
    found = storage.listing(split_dir)
    if not found and storage.scheme(split_dir) in ("http", "https"):
        # a static server without index pages (a CDN, a bucket website): nothing to compare;
        # every shard is still checked against its sha256 while it streams
        log.info("%s: the server lists no files; shards are checked by sha256 only", split_dir)
        return
    bad = [
        f"{name} {'missing' if name not in found else f'{found[name]} bytes'}"
        for name, size in sizes.items()
        if name not in found or (None not in (size, found[name]) and found[name] != size)
    ]
    if bad:
        raise ValueError(
            f"{split_dir}: the listing disagrees with shards.json for {len(bad)} of "
            f"{len(sizes)} shard(s): {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}"
        )


def train_val_splits(root: str | os.PathLike[str]) -> tuple[Path | str, Path | str | None]:
    """``(train split, val split or None)`` of a shard set given by its root or its train/
    split, a local folder or a remote URI; FileNotFoundError naming what is missing."""
    root = storage.location(root)

    def has(d: Path | str) -> bool:
        return storage.exists(storage.join(d, SHARDS_JSON))

    if has(storage.join(root, "train")):
        val = storage.join(root, "val")
        return storage.join(root, "train"), val if has(val) else None
    if has(root):
        val = storage.join(storage.parent(root), "val")
        return root, val if storage.basename(root) != "val" and has(val) else None
    raise FileNotFoundError(
        f"{root} is not a shard set: neither {root}/train/{SHARDS_JSON} nor {root}/{SHARDS_JSON} "
        f"exists (build one with `python pipelines/build_shards.py --config ...`, or pass --shards)"
    )


def shard_paths(split_dir: str | os.PathLike[str]) -> list[Path | str]:
    meta = read_shards_json(split_dir)
    return [storage.join(split_dir, s["name"]) for s in meta["shards"]]


@dataclass
class SplitCheck:
    """What :func:`verify_split` found. ``samples`` is the split's sample count as training
    sees it and the build reports it: samples in the tars minus the keys ``shards.json``
    excludes (cross-shard duplicates and percentile curation cuts, left in their tar so finished
    shards never change)."""

    split: str
    problems: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    in_tars: int = 0
    excluded: int = 0

    @property
    def samples(self) -> int:
        return self.in_tars - self.excluded


def _read_tar(tar: Path | str, entry: dict[str, Any]) -> tuple[BinaryIO | None, str | None]:
    """The tar, opened after its size and sha256 matched ``entry``; else why not. A remote
    tar is fetched once, hashed as it streams and parsed from memory."""
    if storage.is_remote(tar):
        try:
            data, digest = storage.fetch(tar)
        except FileNotFoundError:
            return None, "missing"
        if len(data) != entry["bytes"] or digest != entry["sha256"]:
            return None, "sha256/size differs from shards.json (corrupt or modified)"
        return io.BytesIO(data), None
    tar = Path(tar)
    if not tar.is_file():
        return None, "missing"
    if tar.stat().st_size != entry["bytes"] or sha256_file(tar) != entry["sha256"]:
        return None, "sha256/size differs from shards.json (corrupt or modified)"
    return open(tar, "rb"), None


def _check_shard(
    split_dir: Path | str, entry: dict[str, Any], decode: bool, keys: set[str]
) -> str | None:
    """One shard against its shards.json entry; the problem, or None. Adds its keys to ``keys``."""
    name = entry["name"]
    f, problem = _read_tar(storage.join(split_dir, name), entry)
    if f is None:
        return f"{name}: {problem}"
    n = 0
    with f:
        if not decode:
            return None
        try:
            for _, key, members in iter_tar_range(f):
                decode_members(key, members)
                keys.add(key)
                n += 1
        except (tarfile.TarError, OSError, ValueError, UnicodeDecodeError, EOFError) as e:
            return f"{name}: member does not decode ({type(e).__name__}: {e})"
    if n != entry["samples"]:
        return f"{name}: {n} samples in tar, shards.json says {entry['samples']}"
    return None


def _check_index(split_dir: Path | str, keys: set[str], exclude: set[str]) -> str | None:
    try:
        data = storage.read_bytes(storage.join(split_dir, INDEX))
    except FileNotFoundError:
        return f"{INDEX} missing"
    table = parquet.read_table(data, columns=["key"])
    idx_keys = set(table.column("key").to_pylist())
    expected = keys - exclude
    if idx_keys != expected:
        return (
            f"{INDEX}: {len(idx_keys ^ expected)} keys differ from the tars "
            f"(index {len(idx_keys)}, tars minus excluded {len(expected)})"
        )
    return None


def verify_split(split_dir: str | os.PathLike[str], decode: bool = True) -> SplitCheck:
    """Check every shard of a split against shards.json and the index.

    Checks: tar present, size and sha256 as recorded, every member decodes, sample counts, and
    that ``index.parquet`` lists exactly the tar keys minus the excluded duplicates. No problems
    and no broken shards mean the split is sound.
    """
    split_dir = storage.location(split_dir)
    check = SplitCheck(storage.basename(split_dir))
    try:
        meta = read_shards_json(split_dir)
    except (FileNotFoundError, ValueError) as e:
        check.problems.append(str(e))
        return check
    keys: set[str] = set()
    for entry in meta["shards"]:
        problem = _check_shard(split_dir, entry, decode, keys)
        if problem is not None:
            check.problems.append(problem)
            check.broken.append(entry["name"])
    exclude = set(meta.get("exclude", []))
    if decode:
        check.in_tars, check.excluded = len(keys), len(keys & exclude)
    else:
        check.in_tars = sum(int(e["samples"]) for e in meta["shards"])
        check.excluded = len(exclude)
    if decode and not check.broken:
        problem = _check_index(split_dir, keys, exclude)
        if problem is not None:
            check.problems.append(problem)
    return check


def verify_set(out: str | os.PathLike[str], decode: bool = True) -> list[SplitCheck]:
    """:func:`verify_split` for every split under ``out``, plus agreement with ``build.json``:
    its per-split ``samples`` must equal what the tars hold minus the excluded keys."""
    out = storage.location(out)
    if storage.is_remote(out):  # an object store has no folders: a split is its shards.json
        present = [s for s in SPLITS if storage.exists(storage.join(out, s, SHARDS_JSON))]
    else:
        present = [s for s in SPLITS if (out / s).is_dir()]
    checks = [verify_split(storage.join(out, s), decode) for s in present]
    try:
        counts = storage.read_json(storage.join(out, BUILD_JSON)).get("counts", {})
    except FileNotFoundError:
        counts = {}
    for check in checks:
        recorded = (counts.get(check.split) or {}).get("samples")
        if recorded is not None and not check.broken and recorded != check.samples:
            check.problems.append(
                f"{BUILD_JSON} reports {recorded} samples, the tars hold {check.in_tars} of which "
                f"{check.excluded} are excluded: {check.samples}"
            )
    return checks


def describe_counts(checks: list[SplitCheck]) -> str:
    """``130 samples (train 90, val 16, test 24); the tars hold 133: 3 excluded ...``."""
    total = sum(c.samples for c in checks)
    per_split = ", ".join(f"{c.split} {c.samples}" for c in checks)
    text = f"{total} samples ({per_split})"
    excluded = sum(c.excluded for c in checks)
    if excluded:
        where = ", ".join(f"{c.split} {c.excluded}" for c in checks if c.excluded)
        text += (
            f"; the tars hold {total + excluded}: {excluded} cross-shard duplicates or "
            f"CLAP-score cuts ({where}) stay in their tars but are excluded by shards.json, as "
            f"the build counts them"
        )
    return text
