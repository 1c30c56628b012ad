"""The shard-set bookkeeping: file names, ``shards.json``, and verification of a split.

Layout (DESIGN.md "Shard set layout")::

    out/<split>/shard-000000.tar    written to a temp name, fsynced, renamed
    out/<split>/shards.json         {"shards": [{name, samples, bytes, sha256}], ...}  (written last)
    out/<split>/index.parquet       one row per sample
    out/<split>/rejects.parquet     one row per rejected input
    out/build.json                  config, feature fingerprint, versions, counts, timings

Writing and reading the tars themselves is :mod:`dataprep.core.tario`; atomic writes and
``sha256_file`` are :mod:`dataprep.core.atomic`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dataprep.core.atomic import sha256_file
from dataprep.core.tario import iter_shard

SHARDS_JSON = "shards.json"
INDEX = "index.parquet"
REJECTS = "rejects.parquet"
BUILD_JSON = "build.json"


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


def read_shards_json(split_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Load ``<split_dir>/shards.json``; a clear error when the directory is not a shard set."""
    p = Path(split_dir) / SHARDS_JSON
    if not p.is_file():
        raise FileNotFoundError(
            f"{split_dir} is not a finished shard set: {SHARDS_JSON} is missing "
            f"(build it with `python pipelines/build_shards.py --config ...`)"
        )
    return json.loads(p.read_text())


def shard_paths(split_dir: str | os.PathLike[str]) -> list[Path]:
    meta = read_shards_json(split_dir)
    return [Path(split_dir) / s["name"] for s in meta["shards"]]


def verify_split(
    split_dir: str | os.PathLike[str], decode: bool = True
) -> tuple[list[str], list[str]]:
    """Check every shard of a split against shards.json and the index.

    Returns ``(problems, broken_shard_names)``; empty lists mean the split is sound. Checks:
    tar present, size and sha256 as recorded, every member decodes, sample counts, and that
    ``index.parquet`` lists exactly the tar keys minus the excluded duplicates.
    """
    import pyarrow.parquet as pq

    split_dir = Path(split_dir)
    problems: list[str] = []
    broken: list[str] = []
    try:
        meta = read_shards_json(split_dir)
    except (FileNotFoundError, ValueError) as e:
        return [str(e)], []
    keys: set[str] = set()
    for entry in meta["shards"]:
        name = entry["name"]
        tar = split_dir / name
        if not tar.is_file():
            problems.append(f"{name}: missing")
            broken.append(name)
            continue
        if tar.stat().st_size != entry["bytes"] or sha256_file(tar) != entry["sha256"]:
            problems.append(f"{name}: sha256/size differs from shards.json (corrupt or modified)")
            broken.append(name)
            continue
        if decode:
            n = 0
            try:
                for sample in iter_shard(tar):
                    keys.add(sample["__key__"])
                    n += 1
            except Exception as e:  # any decode failure marks the shard broken
                problems.append(f"{name}: member does not decode ({type(e).__name__}: {e})")
                broken.append(name)
                continue
            if n != entry["samples"]:
                problems.append(f"{name}: {n} samples in tar, shards.json says {entry['samples']}")
                broken.append(name)
    index_path = split_dir / INDEX
    if decode and not broken:
        if not index_path.is_file():
            problems.append(f"{INDEX} missing")
        else:
            idx_keys = set(pq.read_table(index_path, columns=["key"]).column("key").to_pylist())
            expected = keys - set(meta.get("exclude", []))
            if idx_keys != expected:
                problems.append(
                    f"{INDEX}: {len(idx_keys ^ expected)} keys differ from the tars "
                    f"(index {len(idx_keys)}, tars minus excluded {len(expected)})"
                )
    return problems, broken
