"""Deterministic, atomic WebDataset tar shards and the shard-set bookkeeping files.

Layout (DESIGN.md "Shard set layout")::

    out/<split>/shard-000000.tar    written to a temp name, fsynced, renamed
    out/<split>/shards.json         {"shards": [{name, samples, bytes, sha256}], ...}  (written last)
    out/<split>/index.parquet       one row per sample
    out/<split>/rejects.parquet     one row per rejected input
    out/build.json                  config, feature fingerprint, versions, counts, timings

A tar is byte-identical for identical samples: members sorted by (key, extension), mtime,
uid, gid, uname, gname and mode fixed, no PAX headers with timestamps.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from dataprep.core.sample import META, MEL, TEXT

SHARDS_JSON = "shards.json"
INDEX = "index.parquet"
REJECTS = "rejects.parquet"
BUILD_JSON = "build.json"
FIXED_MTIME = 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temp file beside ``path``; on success fsync and rename it to ``path``, on any
    error remove it. Readers never see a half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600; a shard set is read by other users and nodes: use the umask.
    os.fchmod(fd, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


def encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_sample(sample: dict[str, Any]) -> dict[str, bytes]:
    """Turn a sample dict (``__key__``, ``mel.npy`` array, ``json`` dict, ``txt`` str, optional
    ``flac`` bytes) into member bytes. Refuses a sample without ``__key__``."""
    key = sample.get("__key__")
    if not key or "." in key or "/" in key:
        raise ValueError(f"sample needs a __key__ without '.' or '/', got {key!r}")
    out: dict[str, bytes] = {}
    for ext, value in sample.items():
        if ext == "__key__":
            continue
        if isinstance(value, bytes):
            out[ext] = value
        elif ext.endswith(".npy"):
            out[ext] = encode_npy(value)
        elif ext == META or ext.endswith(".json"):
            out[ext] = json.dumps(value, sort_keys=True, ensure_ascii=False).encode()
        elif isinstance(value, str):
            out[ext] = value.encode()
        else:
            raise TypeError(f"cannot encode member {ext!r} of type {type(value).__name__}")
    return out


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = FIXED_MTIME
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def write_tar_atomic(path: str | os.PathLike[str], samples: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Write samples to a deterministic tar at ``path`` atomically; returns its shards.json entry.

    Samples are sorted by key and members by extension, so the bytes depend only on content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = sorted(((s["__key__"], encode_sample(s)) for s in samples), key=lambda kv: kv[0])
    keys = [k for k, _ in encoded]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate sample keys in shard {path.name}")
    h = hashlib.sha256()
    with atomic_file(path) as raw:

        class _Hashing(io.RawIOBase):  # sha256 while writing: no second read of the tar
            def writable(self) -> bool:
                return True

            def write(self, b: Any) -> int:
                h.update(b)
                return raw.write(b)

        with tarfile.open(fileobj=_Hashing(), mode="w|", format=tarfile.USTAR_FORMAT) as tar:
            for key, members in encoded:
                for ext in sorted(members):
                    data = members[ext]
                    tar.addfile(_tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))
    return {"name": path.name, "samples": len(encoded), "bytes": path.stat().st_size, "sha256": h.hexdigest()}


def iter_tar_members(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {ext: bytes})`` per sample, grouping consecutive members by key."""
    current: str | None = None
    members: dict[str, bytes] = {}
    with tarfile.open(path, mode="r|") as tar:
        for ti in tar:
            if not ti.isfile():
                continue
            base = ti.name.rsplit("/", 1)[-1]
            key, _, ext = base.partition(".")
            f = tar.extractfile(ti)
            data = f.read() if f is not None else b""
            if key != current:
                if current is not None:
                    yield current, members
                current, members = key, {}
            members[ext] = data
        if current is not None:
            yield current, members


def decode_members(key: str, members: dict[str, bytes]) -> dict[str, Any]:
    """Decode raw members into ``{"__key__", "mel.npy": ndarray, "json": dict, "txt": str, ...}``."""
    out: dict[str, Any] = {"__key__": key}
    for ext, data in members.items():
        if ext.endswith(".npy"):
            out[ext] = decode_npy(data)
        elif ext == META or ext.endswith(".json"):
            out[ext] = json.loads(data)
        elif ext == TEXT or ext.endswith(".txt"):
            out[ext] = data.decode("utf-8")
        else:
            out[ext] = data
    for required in (MEL, META):
        if required not in out:
            raise ValueError(f"sample {key} has no {required!r} member")
    return out


def iter_shard(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    for key, members in iter_tar_members(path):
        yield decode_members(key, members)


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


def verify_split(split_dir: str | os.PathLike[str], decode: bool = True) -> tuple[list[str], list[str]]:
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
