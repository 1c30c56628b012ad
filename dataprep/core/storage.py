"""Object storage (``s3://``, ``gs://``, ``http(s)://``) through fsspec: the one owner of remote
I/O, of the upload (commit) semantics and of the retry policy (ARCHITECTURE.md, layer 1).

A *location* is a local path (``str``/``Path``, ``file://`` stripped) or a remote URI (``str``).
:func:`join` and :func:`parent` keep a URI's ``//`` (``Path("s3://b/x")`` would collapse it).

Credentials and endpoints come from the filesystem library's own chain, nothing here reads a
secret: s3fs/botocore take ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_PROFILE``,
``~/.aws``, an instance profile or IRSA, and ``AWS_ENDPOINT_URL`` for an S3-compatible service;
gcsfs takes ``GOOGLE_APPLICATION_CREDENTIALS`` or Workload Identity.

Commit semantics (:func:`upload`): s3fs writes an object with one PUT, or a multipart upload above
its block size; S3 and GCS make the object visible under its name only when the PUT or the
``CompleteMultipartUpload`` succeeds, so an upload killed part-way leaves **no object under the
final name** (an abandoned multipart upload is invisible to listings and reads; a bucket
lifecycle rule ``AbortIncompleteMultipartUpload`` reclaims its parts). Writers order uploads so
that a later object marks the earlier ones complete (a tar, then its part record; ``shards.json``
last). ``http(s)://`` is read-only.

Retries (:data:`ATTEMPTS`, exponential backoff, tenacity): transient errors (connection refused
or reset, timeouts, 5xx, throttling) are retried, then :class:`StorageUnavailable` names the URI;
permanent ones (no such object, access denied, no credentials) fail at once. botocore's own
retries and timeouts are bounded (:data:`S3_CLIENT`) so a dead endpoint cannot hang a reader.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

log = logging.getLogger("dataprep.storage")

Location = str | os.PathLike[str]
T = TypeVar("T")

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
WRITABLE = ("s3", "s3a", "gs", "gcs")  # object stores with atomic object commit
ATTEMPTS = 4
BACKOFF_S = (0.25, 4.0)  # first wait, cap
# botocore and s3fs retry too (5 x 3 tries, 60 s read timeout): one try each, so the policy
# above is the only one and a dead or silent endpoint fails within ATTEMPTS x read_timeout
S3_CLIENT = {"connect_timeout": 5, "read_timeout": 20, "retries": {"total_max_attempts": 1}}
CHUNK = 8 << 20  # bytes per read of a local file in fetch()
UPLOAD_PART = 50 << 20  # multipart above this size (S3's minimum part is 5 MiB)


class StorageError(RuntimeError):
    """A permanent remote failure (no credentials, access denied, bad bucket); names the URI."""


class StorageUnavailable(StorageError):
    """The endpoint did not answer after :data:`ATTEMPTS` tries with backoff."""


def scheme(loc: Location) -> str | None:
    m = _URI.match(str(loc))
    return m.group(1).lower() if m else None


def is_remote(loc: Location) -> bool:
    return scheme(loc) not in (None, "file")


def local(loc: Location) -> Path:
    """The local path of a local location (``file://`` stripped)."""
    text = str(loc)
    return Path(text.removeprefix("file://"))


def location(loc: Location) -> str | Path:
    """A remote URI as a string (trailing ``/`` dropped), anything else as a ``Path``."""
    return str(loc).rstrip("/") if is_remote(loc) else local(loc)


def join(base: Location, *names: str) -> str | Path:
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *names])
    return local(base).joinpath(*names)


def parent(loc: Location) -> str | Path:
    if is_remote(loc):
        return str(loc).rstrip("/").rsplit("/", 1)[0]
    return local(loc).parent


def basename(loc: Location) -> str:
    return str(loc).rstrip("/").rsplit("/", 1)[-1]


def _fs(uri: str) -> tuple[Any, str]:
    import fsspec

    opts: dict[str, Any] = {}
    if scheme(uri) in ("s3", "s3a"):
        opts["config_kwargs"] = S3_CLIENT
    fs, path = fsspec.core.url_to_fs(uri, **opts)
    if hasattr(fs, "retries"):  # s3fs's own retry loop (not a constructor option)
        fs.retries = 1
    return fs, path


def _transient(err: BaseException) -> bool:
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    try:
        import botocore.exceptions as be

        if isinstance(err, (be.ConnectionError, be.HTTPClientError)):
            return True
    except ImportError:
        pass
    try:
        import aiohttp

        if isinstance(err, aiohttp.ClientResponseError):
            return err.status >= 500 or err.status == 429
        if isinstance(err, (aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError)):
            return True
    except ImportError:
        pass
    text = str(err)
    return isinstance(err, OSError) and any(
        s in text for s in ("SlowDown", "ServiceUnavailable", "InternalError", "503", "500")
    )


def _permanent(uri: str, err: BaseException) -> StorageError | None:
    """A clear error for failures no retry can fix (None: not one of those)."""
    name = type(err).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError"):
        return StorageError(
            f"{uri}: no credentials found ({err}); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            f"or AWS_PROFILE (S3), GOOGLE_APPLICATION_CREDENTIALS (GCS), or use an instance role"
        )
    if isinstance(err, PermissionError):
        return StorageError(f"{uri}: access refused: {err}")
    if name == "ClientError":
        return StorageError(f"{uri}: {err}")
    return None


def call(uri: Location, fn: Callable[[], T], what: str = "read") -> T:
    """``fn()`` under the retry policy; remote failures become :class:`StorageError`.
    ``FileNotFoundError`` passes through unchanged (callers decide what missing means)."""

    def before_sleep(rs: Any) -> None:
        err = rs.outcome.exception() if rs.outcome else "?"
        log.warning("%s %s: attempt %d failed (%s); retrying", what, uri, rs.attempt_number, err)

    retrying = Retrying(
        stop=stop_after_attempt(ATTEMPTS),
        wait=wait_exponential(multiplier=BACKOFF_S[0], max=BACKOFF_S[1]),
        retry=retry_if_exception(_transient),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(fn)
    except FileNotFoundError:
        raise
    except StorageError:
        raise
    except Exception as err:
        if _transient(err):
            raise StorageUnavailable(
                f"{uri}: storage unreachable after {ATTEMPTS} attempts ({what}): {err}"
            ) from err
        clear = _permanent(str(uri), err)
        if clear is not None:
            raise clear from err
        if isinstance(err, OSError):
            raise
        raise StorageError(f"{uri}: {what} failed: {type(err).__name__}: {err}") from err


def read_bytes(loc: Location) -> bytes:
    if not is_remote(loc):
        return local(loc).read_bytes()
    fs, path = _fs(str(loc))
    return call(loc, lambda: fs.cat_file(path))


def read_head(loc: Location, n: int) -> bytes:
    """The first ``n`` bytes (fewer when the object is shorter)."""
    if not is_remote(loc):
        with open(local(loc), "rb") as f:
            return f.read(n)
    fs, path = _fs(str(loc))
    return call(loc, lambda: fs.cat_file(path, start=0, end=n))


def read_json(loc: Location) -> Any:
    return json.loads(read_bytes(loc))


def fetch(loc: Location) -> tuple[bytes, str]:
    """The object's bytes and their sha256. A remote object is one GET (no HEAD, no ranged
    reads: bench/loader_s3.py measured 3 requests per 10 MB shard with ranged reads, and each
    request costs both ends CPU); a local file is read and hashed chunk by chunk."""
    if is_remote(loc):
        fs, path = _fs(str(loc))
        data = call(loc, lambda: fs.cat_file(path))
        return data, hashlib.sha256(data).hexdigest()
    h, blocks = hashlib.sha256(), []
    with open(local(loc), "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
            blocks.append(block)
    return blocks[0] if len(blocks) == 1 else b"".join(blocks), h.hexdigest()


def exists(loc: Location) -> bool:
    if not is_remote(loc):
        return local(loc).exists()
    fs, path = _fs(str(loc))
    return bool(call(loc, lambda: fs.exists(path), "stat"))


def listing(loc: Location) -> dict[str, int | None]:
    """``{file name: size}`` directly under a folder (fresh, never the cached listing);
    ``{}`` when the folder does not exist. Over ``http(s)://`` the names come from the server's
    index page, without sizes (None), and ``{}`` when it serves none."""
    if not is_remote(loc):
        d = local(loc)
        return {p.name: p.stat().st_size for p in d.iterdir() if p.is_file()} if d.is_dir() else {}
    fs, path = _fs(str(loc))
    try:
        entries = call(loc, lambda: fs.ls(path, detail=True, refresh=True), "list")
    except FileNotFoundError:
        return {}
    return {
        basename(e["name"]): None if e.get("size") is None else int(e["size"])
        for e in entries
        if e.get("type") == "file"
    }


def check_writable(uri: Location) -> None:
    if scheme(uri) not in WRITABLE:
        raise StorageError(
            f"{uri}: cannot write there: only {', '.join(WRITABLE)} object stores (atomic object "
            f"commit) or local/shared paths"
        )


def upload(src: Location, uri: Location) -> None:
    """Copy a local file to ``uri``; the object appears whole or not at all (module doc)."""
    check_writable(uri)
    fs, path = _fs(str(uri))
    call(uri, lambda: fs.put_file(str(src), path, chunksize=UPLOAD_PART), "upload")


def write_bytes(uri: Location, data: bytes) -> None:
    check_writable(uri)
    fs, path = _fs(str(uri))
    call(uri, lambda: fs.pipe_file(path, data), "upload")


def write_json(uri: Location, obj: Any) -> None:
    """Key-sorted JSON, the bytes :func:`dataprep.core.atomic.atomic_write_json` writes."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_bytes(uri, text.encode())


def download(uri: Location, dest: Location) -> None:
    """``uri`` to the local file ``dest``, atomically (a reader never sees half a file)."""
    from dataprep.core.atomic import atomic_write_bytes

    atomic_write_bytes(dest, read_bytes(uri))


def remove(uri: Location) -> None:
    if not is_remote(uri):
        local(uri).unlink(missing_ok=True)
        return
    fs, path = _fs(str(uri))
    try:
        call(uri, lambda: fs.rm_file(path), "delete")
    except FileNotFoundError:
        pass


def folders(loc: Location) -> list[str]:
    """Names of the folders (key prefixes) directly under ``loc``, sorted; ``[]`` when none."""
    if not is_remote(loc):
        d = local(loc)
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
    fs, path = _fs(str(loc))
    try:
        entries = call(loc, lambda: fs.ls(path, detail=True, refresh=True), "list")
    except FileNotFoundError:
        return []
    return sorted(basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory")


def remove_tree(loc: Location) -> None:
    """Every object under the prefix ``loc`` (a local folder: the folder)."""
    if not is_remote(loc):
        import shutil

        shutil.rmtree(local(loc), ignore_errors=True)
        return
    check_writable(loc)
    fs, path = _fs(str(loc))
    try:
        call(loc, lambda: fs.rm(path, recursive=True), "delete")
    except FileNotFoundError:
        pass
