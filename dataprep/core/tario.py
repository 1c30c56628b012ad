"""Tar shard I/O: the one tar writer and the one tar reader (ARCHITECTURE.md, layer 1).

Writer: :func:`write_tar_atomic` makes a deterministic USTAR tar (members sorted by key then
extension; mtime, uid, gid, uname, gname and mode fixed; ``tarfile``'s headers and padding),
written atomically and hashed while written. Equal samples give equal bytes.

Reader: :func:`iter_tar_files` parses the 512-byte headers itself. Python's ``tarfile`` spends
more time in header objects than the loader spends on everything else, and our shards are plain
USTAR; GNU long names and pax ``path`` records are honoured, other entry types skipped, header
checksums verified. Everything that reads shards (loader, verify, quality report, tokenizer
texts) goes through it, via :func:`iter_tar_range` / :func:`iter_tar_members` /
:func:`iter_shard`. The reader raises :class:`tarfile.ReadError` on a damaged tar; what to do
about it (skip, count, report) is the caller's policy.

``.npy`` members are parsed with ``numpy.lib.format`` (header memoized: a shard set has few
distinct ``[n_mels, frames]`` shapes, and the header's ``ast.literal_eval`` costs ~40 us, more than
the rest of a sample's decode).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from dataprep.core.atomic import atomic_file
from dataprep.core.sample import MEL, META, TEXT

FIXED_MTIME = 0
MEMBER_MODE = 0o644
BLOCK = 512


# ------------------------------------------------------------------------------- members ---
def encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


@lru_cache(maxsize=8192)
def _npy_header(head: bytes) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """``(dtype, shape, fortran_order, data offset)`` of the ``.npy`` starting with ``head``."""
    f = io.BytesIO(head)
    version = npy_format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if dtype.hasobject:
        raise ValueError("object arrays are refused (they would need pickle)")
    return dtype, shape, fortran, f.tell()


def _npy_header_len(data: bytes) -> int:
    if data[:6] != b"\x93NUMPY" or len(data) < 12:
        raise ValueError("not a .npy member (bad magic)")
    if data[6] == 1:
        return 10 + int.from_bytes(data[8:10], "little")
    return 12 + int.from_bytes(data[8:12], "little")


def decode_npy(data: bytes) -> np.ndarray:
    """A read-only array viewing ``data`` (no copy)."""
    dtype, shape, fortran, offset = _npy_header(bytes(data[: _npy_header_len(data)]))
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(
            f".npy data is {len(data) - offset} bytes, header says {count * dtype.itemsize}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


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


def decode_members(key: str, members: dict[str, bytes]) -> dict[str, Any]:
    """Raw members -> ``{"__key__", "mel.npy": ndarray, "json": dict, "txt": str, ...}``."""
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


# -------------------------------------------------------------------------------- writer ---
def _member_header(name: str, size: int) -> bytes:
    """The USTAR header block(s) of one member, as ``tarfile`` writes them (same TarInfo)."""
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = size, FIXED_MTIME, MEMBER_MODE, "", ""
    return ti.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")


def write_tar_atomic(
    path: str | os.PathLike[str], samples: Iterable[dict[str, Any]]
) -> dict[str, Any]:
    """Write samples to a deterministic tar at ``path`` atomically; returns its shards.json entry
    ``{name, samples, bytes, sha256}``. Samples are sorted by key, members by extension.

    The bytes are the ones ``tarfile`` (under ``webdataset.TarWriter``, this writer before) made
    for the same members: header, data, NUL padding to 512 bytes per member, two NUL blocks and
    padding to a whole 10,240-byte record at the end. Writing them directly, one ``write`` per
    piece and hashed on the way, cost a third of what tarfile's stream buffer and per-chunk copy
    loop did (bench/RESULTS.md, shard-build profile).
    """
    path = Path(path)
    encoded = sorted(((s["__key__"], encode_sample(s)) for s in samples), key=lambda kv: kv[0])
    keys = [k for k, _ in encoded]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate sample keys in shard {path.name}")
    digest = hashlib.sha256()
    offset = 0
    with atomic_file(path) as raw:
        for key, members in encoded:
            for ext in sorted(members):
                data = members[ext]
                pieces = [_member_header(f"{key}.{ext}", len(data)), data]
                if pad := -len(data) % BLOCK:
                    pieces.append(bytes(pad))
                for piece in pieces:
                    digest.update(piece)
                    raw.write(piece)
                    offset += len(piece)
        end = 2 * BLOCK
        end += -(offset + end) % tarfile.RECORDSIZE
        digest.update(bytes(end))
        raw.write(bytes(end))
    return {
        "name": path.name,
        "samples": len(encoded),
        "bytes": path.stat().st_size,
        "sha256": digest.hexdigest(),
    }


# -------------------------------------------------------------------------------- reader ---
def _octal(field: bytes) -> int:
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _header(hdr: bytes, offset: int) -> tuple[bytes, int, bytes]:
    """``(name, size, type flag)`` of one header block; ReadError when it is not one."""
    try:
        if _octal(hdr[148:156]) != sum(hdr[:148]) + 256 + sum(hdr[156:]):
            raise tarfile.ReadError(f"bad header checksum at byte {offset}")
        size = _octal(hdr[124:136])
    except ValueError as err:
        raise tarfile.ReadError(f"bad header at byte {offset}: {err}") from None
    name = hdr[:100].split(b"\0", 1)[0]
    prefix = hdr[345:500].split(b"\0", 1)[0] if hdr[257:262] == b"ustar" else b""
    if prefix:
        name = prefix + b"/" + name
    return name, size, hdr[156:157]


def _extended_name(kind: bytes, ext: bytes) -> bytes | None:
    if kind == b"L":
        return ext.split(b"\0", 1)[0]
    for rec in ext.split(b"\n"):
        _, _, kv = rec.partition(b" ")
        if kv.startswith(b"path="):
            return kv[5:]
    return None


def iter_tar_files(f: BinaryIO) -> Iterator[tuple[str, int]]:
    """``(name, size)`` of each regular file of a tar; ``f`` is left at the member's data.

    The next header is found by absolute offset, so the caller may read the data, part of it,
    or nothing. A file that ends without the end-of-archive blocks is truncated: ReadError.
    """
    offset = 0
    long_name: bytes | None = None
    while True:
        f.seek(offset)
        hdr = f.read(BLOCK)
        if hdr == bytes(BLOCK):
            return
        if len(hdr) < BLOCK:
            raise tarfile.ReadError(f"truncated tar: no end-of-archive marker at byte {offset}")
        name, size, kind = _header(hdr, offset)
        data_at = offset + BLOCK
        offset = data_at + (size + BLOCK - 1) // BLOCK * BLOCK
        if kind in (b"L", b"x"):
            f.seek(data_at)
            long_name = _extended_name(kind, f.read(size)) or long_name
            continue
        if kind in (b"0", b"\0", b"7"):
            f.seek(data_at)
            yield (long_name or name).decode("utf-8", "replace"), size
        long_name = None


def split_member(name: str) -> tuple[str, str]:
    """``dir/key.ext.parts`` -> ``(key, ext.parts)`` (webdataset's convention)."""
    key, _, ext = name.rsplit("/", 1)[-1].partition(".")
    return key, ext


def iter_tar_range(
    f: BinaryIO, lo: int = 0, hi: int | None = None
) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """``(position, key, {ext: bytes})`` for samples ``lo <= position < hi`` of an open tar.

    A sample is the run of consecutive members sharing a key. Members of samples outside the
    range are seeked over, not read. Raises ReadError on a damaged tar (samples already
    yielded stay yielded).
    """
    pos = -1
    current: str | None = None
    members: dict[str, bytes] = {}
    for name, size in iter_tar_files(f):
        key, ext = split_member(name)
        if key != current:
            if current is not None and pos >= lo and members:
                yield pos, current, members
            current, members, pos = key, {}, pos + 1
            if hi is not None and pos >= hi:
                return
        if pos < lo:
            continue
        data = f.read(size)
        if len(data) != size:
            raise tarfile.ReadError(f"member {name} truncated")
        members[ext] = data
    if current is not None and pos >= lo and members:
        yield pos, current, members


def iter_tar_members(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {ext: bytes})`` of every sample of the tar at ``path`` (a local file, or a remote
    object fetched once: ``core.storage``)."""
    from dataprep.core import storage

    remote = storage.is_remote(path)
    with io.BytesIO(storage.read_bytes(path)) if remote else open(path, "rb") as f:
        for _, key, members in iter_tar_range(f):
            yield key, members


def iter_shard(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every sample of a tar, decoded (:func:`decode_members`)."""
    for key, members in iter_tar_members(path):
        yield decode_members(key, members)


def first_member(path: str | os.PathLike[str], ext: str) -> bytes | None:
    """The first member with extension ``ext`` (e.g. the first sample's ``json``), or None."""
    with open(path, "rb") as f:
        for name, size in iter_tar_files(f):
            if split_member(name)[1] == ext:
                return f.read(size)
    return None
