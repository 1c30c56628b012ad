"""Stage 1, read a shard range: ``(shard, lo, hi)`` segments -> ``(shard, key, members)``.

Integrity (issue 19): with ``verify`` each tar is read whole into memory, its size and sha256
compared with ``shards.json``, and only then parsed, so no sample of a damaged shard is ever
fed (a shard is ~64 MB by default: ``build.shards.target_mb``). A boundary shard shared by two
workers is read whole by both, for the same reason. Without ``verify`` (or when ``shards.json``
records no sha256) the tar is streamed and the members outside the range are seeked over.
The cost of checking is measured in ``bench/loader.py`` (see bench/RESULTS.md).

A remote shard (``s3://``, ``gs://``, ``http(s)://``; :mod:`dataprep.core.storage`) is always
fetched whole, hashed chunk by chunk as it arrives, with the storage retry policy; an endpoint
that stays down raises :class:`~dataprep.core.storage.StorageUnavailable` (never a skip: a dead
bucket is not a corrupt shard). With a ``cache_dir`` a checked remote shard is kept there under
its sha256 and read locally next time (content-addressed: a rebuilt shard never hits a stale
copy).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from dataprep.core import storage, tario
from dataprep.core.atomic import atomic_write_bytes
from dataprep.core.sample import META, TEXT
from dataprep.loader.errors import ErrorPolicy, ShardCorrupt
from dataprep.loader.shardset import ShardRecord, ShardSet

Members = dict[str, bytes]


def _check(data: bytes, digest: str | None, record: ShardRecord) -> None:
    if record.size_bytes is not None and len(data) != record.size_bytes:
        raise ShardCorrupt(f"{len(data)} bytes, shards.json records {record.size_bytes}")
    digest = digest or hashlib.sha256(data).hexdigest()
    if digest != record.sha256:
        raise ShardCorrupt(
            f"sha256 {digest[:16]}... differs from shards.json {record.sha256[:16]}..."
        )


def _cached(path: str, record: ShardRecord, verify: bool, cache_dir: str | None) -> bytes:
    """A remote shard's bytes, checked while streaming; kept in ``cache_dir`` once checked."""
    cached = Path(cache_dir) / f"{record.sha256}.tar" if cache_dir and record.sha256 else None
    if cached is not None and cached.is_file():
        data = cached.read_bytes()
        try:
            _check(data, None, record)
            return data
        except ShardCorrupt:  # a damaged cache copy is refetched, not a corrupt shard
            cached.unlink(missing_ok=True)
    data, digest = storage.fetch(path)
    if verify and record.sha256:
        _check(data, digest, record)
        if cached is not None:
            atomic_write_bytes(cached, data)
    return data


def open_checked(
    path: str | Path, record: ShardRecord, verify: bool, cache_dir: str | None = None
) -> BinaryIO:
    """The tar as a file object; with ``verify`` its bytes were checked against ``record``."""
    if storage.is_remote(path):
        return io.BytesIO(_cached(str(path), record, verify, cache_dir))
    if not (verify and record.sha256):
        return open(path, "rb")
    data = Path(path).read_bytes()
    _check(data, None, record)
    return io.BytesIO(data)


def _open(
    shard_set: ShardSet, name: str, verify: bool, cache_dir: str | None
) -> BinaryIO | OSError:
    """Runs on the read-ahead thread: the opened (and checked) tar, or why it cannot be used.
    A :class:`~dataprep.core.storage.StorageError` is raised, not returned: it stops the run."""
    try:
        return open_checked(shard_set.path(name), shard_set.record(name), verify, cache_dir)
    except OSError as err:  # FileNotFoundError, ShardCorrupt, I/O errors
        return err


def read_range(
    shard_set: ShardSet, name: str, lo: int, hi: int, policy: ErrorPolicy,
    opened: BinaryIO | OSError, picks: dict[str, tuple[int, ...]] | None = None,
) -> Iterator[tuple[str, int, Members]]:  # fmt: skip
    """``(key, repeat, members)`` of samples ``lo <= position < hi`` of one opened shard, minus
    excluded keys. With ``picks`` (a weighted epoch) only the picked keys, once per repeat
    index. A missing or corrupt shard goes to ``policy`` (samples already yielded stay
    yielded): unweighted, the shard's samples are counted by the worker reading its start;
    weighted, each worker counts the draws it lost."""
    first = lo == 0 or picks is not None
    lost = hi - lo if picks is None else sum(len(r) for r in picks.values())
    if isinstance(opened, FileNotFoundError):
        policy.shard_missing(name, lost, first)
        return
    if isinstance(opened, OSError):
        policy.shard_corrupt(name, opened, lost, first)
        return
    pos, done = lo - 1, 0
    with opened:
        try:
            for pos, key, members in tario.iter_tar_range(opened, lo, hi):
                if key in shard_set.exclude:
                    continue
                for repeat in (0,) if picks is None else picks.get(key, ()):
                    yield key, repeat, members
                    done += 1
        except (OSError, EOFError, tarfile.TarError, UnicodeDecodeError) as err:
            # found part-way (unchecked read): counted by whoever read up to the damage in its
            # own range; damage right at another worker's first sample may go uncounted
            left = hi - pos - 1 if picks is None else lost - done
            policy.shard_corrupt(name, err, left, first or pos >= lo)


def read_segments(
    shard_set: ShardSet, segments: Iterable[tuple[Any, ...]], policy: ErrorPolicy,
    verify: bool = True, cache_dir: str | None = None,
) -> Iterator[tuple[str, str, int, Members]]:  # fmt: skip
    """``(shard name, key, repeat, members)`` over a worker's segments, in order: ``(name, lo,
    hi)`` or, in a weighted epoch, ``(name, lo, hi, picks)`` (:mod:`dataprep.loader.sampling`).

    The next shard is read and hashed on a thread while this one is parsed (hashlib and file
    reads release the GIL), which hides the check's cost and the storage latency where a core
    is free; at most two shards per worker are in memory (the read-ahead bound, local or remote).
    """
    segments = list(segments)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-read") as pool:
        ahead = [pool.submit(_open, shard_set, seg[0], verify, cache_dir) for seg in segments[:1]]
        try:
            for i, (name, lo, hi, *picks) in enumerate(segments):
                opened = ahead.pop().result()
                if i + 1 < len(segments):
                    nxt = segments[i + 1][0]
                    ahead.append(pool.submit(_open, shard_set, nxt, verify, cache_dir))
                got = read_range(shard_set, name, lo, hi, policy, opened, *picks)
                for key, repeat, members in got:
                    yield name, key, repeat, members
        finally:  # the consumer stopped early: close what was read ahead
            for pending in ahead:
                if pending.exception() is None and not isinstance(pending.result(), OSError):
                    pending.result().close()


def _texts(members: Members) -> set[tuple[str, str]]:
    """``(lang, text)`` of the sample's texts: a text's own ``lang``, else the sample's."""
    seen: set[tuple[str, str]] = set()
    meta: dict = {}
    if META in members:
        try:
            meta = json.loads(members[META])
        except ValueError:
            meta = {}
    lang = str(meta.get("lang") or "")
    if TEXT in members:
        seen.add((lang, members[TEXT].decode("utf-8", "replace")))
    for t in meta.get("texts") or ():
        text = t.get("text") if isinstance(t, dict) else t
        if isinstance(text, str):
            own = t.get("lang") if isinstance(t, dict) else None
            seen.add((str(own or lang), text))
    return seen


def iter_shard_texts(
    split_dir: str | os.PathLike[str], policy: ErrorPolicy | None = None, *, langs: bool = False
) -> Iterator[Any]:
    """Every text of a split (``txt`` and all ``texts`` entries), audio never decoded; for
    tokenizer training. With ``langs``: ``(lang, text)`` pairs (``""``: no language known).
    Shards are integrity-checked like the training stream's."""
    shard_set = ShardSet.open(split_dir)
    policy = policy or ErrorPolicy()
    segments = [(name, 0, n) for name, n in shard_set.shards]
    for _, _, _, members in read_segments(shard_set, segments, policy):
        pairs = sorted(_texts(members))
        if langs:
            yield from pairs
        else:
            yield from sorted({t for _, t in pairs})
