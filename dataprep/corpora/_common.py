"""Helpers shared by the readers: fsspec roots, safe path joins, listings, reject rows.

Every reader resolves its ``root`` (local path, ``file://``, ``http(s)://``, ``s3://``,
``memory://`` ...) once with :class:`CorpusRoot`, joins metadata paths with
:meth:`CorpusRoot.join` (which refuses paths that escape the root), and turns an unusable row
into a ``Reject`` with stage ``reader`` via :func:`reader_reject`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import posixpath
import re
from collections.abc import Iterator
from typing import Any, TypeVar

import fsspec
from pydantic import BaseModel, ConfigDict, ValidationError

from dataprep.core.config import ConfigError, CorpusConfig
from dataprep.core.sample import Reject

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff")

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class PathEscape(ValueError):
    """A metadata path that would leave the corpus root (absolute, ``..``, a URL)."""


class CorpusRoot:
    """One corpus root on any fsspec filesystem.

    Paths handed out are *relative* (the stable ``source_id``) or full URIs for ``SampleRef.audio``
    (a plain path for local files, so soundfile can open them without fsspec).
    """

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = uri
        self.fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        self.root = root.rstrip("/") or "/"
        self.local = "file" in _protocols(self.fs)
        self._listings: dict[str, set[str] | None] = {}
        self._real_dirs: dict[
            str, str
        ] = {}  # realpath per folder: one lstat per file, not per part

    def join(self, rel: str) -> str:
        """Filesystem path of ``rel`` under the root; raises :class:`PathEscape`."""
        rel_norm = safe_relpath(rel)
        full = posixpath.join(self.root, rel_norm)
        if self.local:
            # A symlink inside the corpus may still point outside it.
            real_root = self._real_dir(self.root)
            real = self._realpath(full)
            if real != real_root and not real.startswith(real_root + os.sep):
                raise PathEscape(f"{rel!r} resolves outside the corpus root (symlink)")
        return full

    def _real_dir(self, folder: str) -> str:
        real = self._real_dirs.get(folder)
        if real is None:
            real = self._real_dirs[folder] = os.path.realpath(folder)
        return real

    def _realpath(self, full: str) -> str:
        """``os.path.realpath(full)`` with the folder's resolution cached: a 10M-row manifest
        spent most of its scan resolving the same folders again (lstat per path component)."""
        folder, leaf = posixpath.split(full)
        cand = posixpath.join(self._real_dir(folder), leaf)
        return os.path.realpath(cand) if os.path.islink(cand) else cand

    def uri_of(self, path: str) -> str:
        return path if self.local else self.fs.unstrip_protocol(path)

    def relpath(self, path: str) -> str:
        return posixpath.relpath(path, self.root)

    def relative_uri(self, uri: str) -> str | None:
        """``uri`` (as :meth:`uri_of` made it) relative to the root; None when outside it.

        This is what a sample records as ``source_uri``: it names the same file on any machine
        and from any checkout, with the root itself recorded once (``build.json``)."""
        path = uri if self.local else _strip(self.fs, uri)
        base = self.root.rstrip("/") + "/"
        return path[len(base) :] if path.startswith(base) and len(path) > len(base) else None

    def exists(self, path: str) -> bool:
        """Existence via one cached directory listing per folder (cheap over HTTP/S3)."""
        parent = posixpath.dirname(path)
        names = self._listing(parent)
        if names is None:
            try:
                return bool(self.fs.exists(path))
            except Exception:  # noqa: BLE001 - an unreachable file is simply absent
                return False
        return posixpath.basename(path) in names

    def list_dir(self, rel_dir: str) -> list[str]:
        """Sorted file names directly inside ``rel_dir`` ([] if it does not exist)."""
        names = self._listing(
            posixpath.join(self.root, safe_relpath(rel_dir)) if rel_dir else self.root
        )
        return sorted(names or ())

    def _listing(self, path: str) -> set[str] | None:
        if path not in self._listings:
            try:
                entries = self.fs.ls(path, detail=True)
                self._listings[path] = {
                    posixpath.basename(e["name"].rstrip("/"))
                    for e in entries
                    if e.get("type") != "directory"
                }
            except Exception:  # noqa: BLE001 - no listing (e.g. HTTP without index pages)
                self._listings[path] = None
        return self._listings[path]

    def subdirs(self, rel_dir: str = "") -> list[str]:
        path = posixpath.join(self.root, safe_relpath(rel_dir)) if rel_dir else self.root
        try:
            entries = self.fs.ls(path, detail=True)
        except Exception:  # noqa: BLE001
            return []
        return sorted(
            posixpath.basename(e["name"].rstrip("/"))
            for e in entries
            if e.get("type") == "directory"
        )

    def isfile(self, rel: str) -> bool:
        try:
            return self.exists(self.join(rel))
        except PathEscape:
            return False

    def read_bytes(self, rel: str) -> bytes:
        """The bytes of a metadata file under the root (raises PathEscape, OSError)."""
        with self.fs.open(self.join(rel), "rb") as fh:
            return fh.read()

    def read_text(self, rel: str, encoding: str = "utf-8") -> str:
        data = self.read_bytes(rel)
        # utf-8-sig: a BOM written by spreadsheet tools must not become part of a column name.
        return data.decode("utf-8-sig" if encoding == "utf-8" else encoding)

    def read_metadata(self, cfg: CorpusConfig, rel: str) -> bytes | Reject:
        """The bytes of one metadata file, or a reader Reject naming it when it cannot be read.

        A manifest that is a symlink out of the root, missing, or unreadable is one recorded row
        (``path_escape`` / ``unreadable_metadata``); the other metadata files still get read.
        """
        try:
            return self.read_bytes(rel)
        except PathEscape as err:
            return reader_reject(cfg, rel, "path_escape", f"metadata file {rel}: {err}")
        except (OSError, ValueError) as err:
            # FileNotFoundError, IsADirectoryError, a dangling symlink, a permission error.
            return reader_reject(
                cfg, rel, "unreadable_metadata", f"metadata file {rel}: {type(err).__name__}: {err}"
            )

    def walk_files(
        self, rel_dir: str = "", extensions: tuple[str, ...] = AUDIO_EXTENSIONS
    ) -> list[str]:
        """Relative paths of all files below ``rel_dir`` with one of ``extensions``, sorted."""
        base = posixpath.join(self.root, safe_relpath(rel_dir)) if rel_dir else self.root
        try:
            found = self.fs.find(base)
        except Exception:  # noqa: BLE001
            return []
        out = []
        for p in found:
            if p.lower().endswith(extensions):
                out.append(posixpath.relpath(_strip(self.fs, p), self.root))
        return sorted(out)


def _strip(fs: Any, path: str) -> str:
    return fs._strip_protocol(path)


def _protocols(fs: Any) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def safe_relpath(rel: str) -> str:
    """Normalise a metadata path; refuse absolute paths, URLs and ``..`` that leave the root."""
    if not isinstance(rel, str) or not rel.strip():
        raise PathEscape(f"empty path {rel!r}")
    raw = rel.strip().replace("\\", "/")
    if _SCHEME.match(raw) or raw.startswith("/") or re.match(r"^[A-Za-z]:", raw) or "\x00" in raw:
        raise PathEscape(f"{rel!r} is absolute or a URL; metadata paths must be relative")
    norm = posixpath.normpath(raw)
    if norm == ".." or norm.startswith("../"):
        raise PathEscape(f"{rel!r} escapes the corpus root")
    return norm


def reader_reject(cfg: CorpusConfig, source_id: str, reason: str, detail: str) -> Reject:
    return Reject(
        source=f"{cfg.name}:{source_id}",
        stage="reader",
        reason=reason,
        detail=detail,
        corpus=cfg.name,
    )


def resolve_audio(
    cfg: CorpusConfig, root: CorpusRoot, rel: str, check_exists: bool = True
) -> tuple[str, str] | Reject:
    """``(source_id, uri)`` of an audio path from metadata, or a reader Reject."""
    try:
        path = root.join(rel)
    except PathEscape as err:
        return reader_reject(cfg, str(rel), "path_escape", str(err))
    source_id = root.relpath(path)
    if check_exists and not root.exists(path):
        return reader_reject(
            cfg, source_id, "missing_file", f"audio file {source_id} not found under {cfg.root}"
        )
    return source_id, root.uri_of(path)


def read_table(text: str, delimiter: str) -> Iterator[dict[str, str]]:
    """Rows of a CSV/TSV with a header. TSVs are read without quote handling (Common Voice)."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    for row in reader:
        yield {(k or "").strip(): (v if v is not None else "") for k, v in row.items()}


def _lines(data: str | bytes) -> Iterator[tuple[int, str | None, str]]:
    """``(line_number, line or None, error)``: bytes are decoded line by line, so one byte that
    is not UTF-8 costs its own line (named in the error), never the whole file."""
    if isinstance(data, str):
        for i, line in enumerate(data.splitlines(), start=1):
            yield i, line, ""
        return
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    # Split on b"\n" only: str.splitlines would also cut at U+2028 & co. inside JSON strings.
    for i, raw in enumerate(data.split(b"\n"), start=1):
        try:
            yield i, raw.decode("utf-8").removesuffix("\r"), ""
        except UnicodeDecodeError as err:
            bad = raw[err.start : err.start + 1].hex()
            yield i, None, f"line {i} is not valid UTF-8 (byte 0x{bad} at column {err.start + 1})"


def read_jsonl(data: str | bytes) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """``(line_number, row or None, error)`` for every non-blank line (text or raw bytes)."""
    for i, line, decode_err in _lines(data):
        if line is None:
            yield i, None, decode_err
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            yield i, None, f"line {i} is not JSON: {err.msg}"
            continue
        if not isinstance(row, dict):
            yield i, None, f"line {i} is not a JSON object"
            continue
        yield i, row, ""


def parse_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


class ReaderOptions(BaseModel):
    """A reader's ``options``: one frozen model per reader that forbids unknown keys, so a typo
    fails when the config loads (:func:`dataprep.corpora.validate_corpora`), before any work."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    license: str | None = None  # the corpus's license when its metadata has none


OptionsT = TypeVar("OptionsT", bound=ReaderOptions)


def parse_options(cfg: CorpusConfig, model: type[OptionsT]) -> OptionsT:
    """``cfg.options`` as the reader's typed options; :class:`ConfigError` naming the key."""
    try:
        return model.model_validate(cfg.options)
    except ValidationError as err:
        raise ConfigError(_options_error(cfg, model, err)) from None


def _options_error(cfg: CorpusConfig, model: type[ReaderOptions], err: ValidationError) -> str:
    lines = [f"corpus {cfg.name!r} (reader {cfg.reader!r}): invalid options"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "options"
        if e["type"] == "extra_forbidden":
            lines.append(f"  unknown option {loc!r}; known: {sorted(model.model_fields)}")
        else:
            lines.append(f"  options.{loc}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)
