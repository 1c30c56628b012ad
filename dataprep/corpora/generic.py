"""Generic layouts: a folder of audio files with sidecars, and a metadata table.

``folder`` — every audio file below ``root`` (sorted); a sidecar with the same stem gives the
metadata: ``<stem>.txt`` (the text) and/or ``<stem>.json`` (any of ``text``, ``lang``,
``labels``, ``speaker``, ``license``, ``captions``, ``split``, ``start_s``, ``end_s``; other
keys go to ``extra``). ``options``: ``lang``, ``license`` (defaults), ``label_from_parent``
(the parent folder's name becomes the label), ``require_sidecar`` (reject files without one).

``table`` — one CSV, TSV or JSONL file (``options.file``, relative to ``root``; the format from
its extension) and ``options.columns``, a mapping from SampleRef fields to column names, e.g.
``{audio: path, text: sentence, lang: locale, labels: category, speaker: client_id}``. Audio
paths are relative to the table's folder (escapes are rejected). ``labels`` and ``captions``
columns are split on ``options.list_sep`` (default ``|``). Other columns go to ``extra`` when
listed in ``options.extra_columns``.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from typing import Any

from pydantic import field_validator

from dataprep.core.config import CorpusConfig
from dataprep.core.lang import base_lang
from dataprep.core.sample import SPLITS, Reject, SampleRef
from dataprep.corpora import register
from dataprep.corpora._common import (
    AUDIO_EXTENSIONS,
    CorpusRoot,
    ReaderOptions,
    parse_float,
    parse_options,
    read_jsonl,
    read_table,
    reader_reject,
    resolve_audio,
)

FIELDS = {"audio", "text", "lang", "labels", "speaker", "license", "split", "captions",
          "start_s", "end_s", "duration_s", "source_id"}  # fmt: skip


class FolderOptions(ReaderOptions):
    lang: str | None = None  # default language of files whose sidecar has none
    label_from_parent: bool = False  # the parent folder's name becomes the label
    require_sidecar: bool = False  # reject audio files without a .txt/.json sidecar
    task: str | None = None  # extra.task of every item (e.g. "asr")


class TableOptions(ReaderOptions):
    file: str  # the table, relative to root (.csv, .tsv/.tab, .jsonl/.json)
    columns: dict[str, str]  # SampleRef field -> column name; ``audio`` is required
    list_sep: str = "|"  # separator of labels/captions columns
    extra_columns: tuple[str, ...] = ()  # columns copied into extra
    lang: str | None = None
    task: str | None = None
    check_exists: bool = True

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, v: dict[str, str]) -> dict[str, str]:
        if "audio" not in v:
            raise ValueError("needs an 'audio' column mapping (columns.audio)")
        unknown = set(v) - FIELDS
        if unknown:
            raise ValueError(
                f"unknown column mapping keys {sorted(unknown)}; known: {sorted(FIELDS)}"
            )
        return v


def _tuple(value: Any, sep: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value if str(v).strip())
    return tuple(v.strip() for v in str(value).split(sep) if v.strip())


def _split(value: Any) -> str | None:
    v = str(value).strip().lower() if value not in (None, "") else ""
    v = {"dev": "val", "valid": "val", "validation": "val", "eval": "test"}.get(v, v)
    return v if v in SPLITS else None


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


@register("folder", FolderOptions)
def read_folder(cfg: CorpusConfig) -> Iterator[SampleRef | Reject]:
    opts = parse_options(cfg, FolderOptions)
    root = CorpusRoot(cfg.root)
    lang = opts.lang
    license_ = opts.license
    label_from_parent = opts.label_from_parent
    require_sidecar = opts.require_sidecar
    task = opts.task
    for rel in root.walk_files("", AUDIO_EXTENSIONS):
        stem = posixpath.splitext(rel)[0]
        text = None
        meta: dict[str, Any] = {}
        if root.isfile(f"{stem}.txt"):
            text = root.read_text(f"{stem}.txt").strip()
        if root.isfile(f"{stem}.json"):
            try:
                loaded = json.loads(root.read_text(f"{stem}.json"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                yield reader_reject(cfg, rel, "invalid_metadata", f"{stem}.json: {err}")
                continue
            if not isinstance(loaded, dict):
                yield reader_reject(cfg, rel, "invalid_metadata", f"{stem}.json is not an object")
                continue
            meta = loaded
        if require_sidecar and text is None and not meta:
            yield reader_reject(
                cfg, rel, "missing_metadata", f"no {stem}.txt or {stem}.json sidecar"
            )
            continue
        resolved = resolve_audio(cfg, root, rel, check_exists=False)
        if isinstance(resolved, Reject):
            yield resolved
            continue
        source_id, uri = resolved
        labels = _tuple(meta.get("labels"), "|")
        parent = posixpath.basename(posixpath.dirname(rel))
        if not labels and label_from_parent and parent:
            labels = (parent,)
        extra = {k: _hashable(v) for k, v in meta.items() if k not in FIELDS}
        if task and "task" not in extra:
            extra["task"] = task
        yield SampleRef(
            corpus=cfg.name,
            source_id=source_id,
            audio=uri,
            text=meta.get("text", text),
            lang=base_lang(meta.get("lang")) or lang,
            labels=labels,
            speaker=meta.get("speaker"),
            license=meta.get("license", license_),
            split=_split(meta.get("split")),
            start_s=parse_float(meta.get("start_s")),
            end_s=parse_float(meta.get("end_s")),
            duration_s=parse_float(meta.get("duration_s")),
            captions=_tuple(meta.get("captions"), "|"),
            extra=tuple(sorted(extra.items())),
        )


@register("table", TableOptions)
def read_table_corpus(cfg: CorpusConfig) -> Iterator[SampleRef | Reject]:
    opts = parse_options(cfg, TableOptions)
    file = opts.file
    columns = opts.columns
    root = CorpusRoot(cfg.root)
    sep = opts.list_sep
    extra_cols = opts.extra_columns
    check_exists = opts.check_exists
    task = opts.task
    folder = posixpath.dirname(file)
    data = root.read_metadata(cfg, file)
    if isinstance(data, Reject):  # unreadable table / symlink out of the root: one row
        yield data
        return
    if file.endswith((".jsonl", ".json")):
        # bytes: a line that is not UTF-8 is one invalid_metadata row, the rest is read
        rows = ((n, r, e) for n, r, e in read_jsonl(data))
    else:
        delim = "\t" if file.endswith((".tsv", ".tab")) else ","
        text = data.decode("utf-8-sig")  # a CSV's quoting spans lines: decoded whole
        rows = ((n, r, "") for n, r in enumerate(read_table(text, delim), start=2))
    for line_no, row, err in rows:
        where = f"{file}:{line_no}"
        if row is None:
            yield reader_reject(cfg, where, "invalid_metadata", err)
            continue

        def col(name: str, row: dict[str, Any] = row) -> Any:
            key = columns.get(name)
            return row.get(key) if key else None

        audio = col("audio")
        if not isinstance(audio, str) or not audio.strip():
            yield reader_reject(cfg, where, "invalid_metadata", f"{where}: empty audio column")
            continue
        resolved = resolve_audio(
            cfg,
            root,
            posixpath.join(folder, audio.strip()) if folder else audio.strip(),
            check_exists,
        )
        if isinstance(resolved, Reject):
            yield resolved
            continue
        source_id, uri = resolved
        start, end = parse_float(col("start_s")), parse_float(col("end_s"))
        if start is not None and end is not None and end <= start:
            yield reader_reject(
                cfg, source_id, "invalid_metadata", f"{where}: end_s {end} <= start_s {start}"
            )
            continue
        extra = {c: _hashable(row.get(c)) for c in extra_cols if row.get(c) not in (None, "")}
        if task:
            extra["task"] = task
        sid = col("source_id")
        text_v = col("text")
        yield SampleRef(
            corpus=cfg.name,
            source_id=str(sid)
            if sid not in (None, "")
            else (source_id if start is None else f"{source_id}@{start:.3f}"),
            audio=uri,
            text=str(text_v) if text_v not in (None,) else None,
            lang=base_lang(col("lang")) or opts.lang,
            labels=_tuple(col("labels"), sep),
            speaker=str(col("speaker")) if col("speaker") not in (None, "") else None,
            license=col("license") or opts.license,
            split=_split(col("split")),
            start_s=start,
            end_s=end,
            duration_s=parse_float(col("duration_s")),
            captions=_tuple(col("captions"), sep),
            extra=tuple(sorted(extra.items())),
        )
