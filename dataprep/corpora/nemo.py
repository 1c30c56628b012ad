"""NeMo-style JSONL manifests (NVIDIA NeMo ASR/audio datasets).

Format: https://docs.nvidia.com/nemo-framework/user-guide/latest/nemotoolkit/asr/datasets.html
One JSON object per line: ``audio_filepath`` (relative to the manifest's folder; absolute paths
and ``..`` are rejected as ``path_escape``), ``text``, ``duration`` (s), optional ``offset``
(s; the row is the region ``[offset, offset + duration]``), ``lang``; any other key (``task``,
``source``, ``speaker``, ``label``...) lands in ``extra``. License: whatever the data says
(``options.license``).

``cfg.splits`` names the manifests (``train_manifest`` or ``train_manifest.jsonl``; default:
every ``*.jsonl``/``*.json`` in the root). Split: ``train``/``dev|val``/``test`` from the
manifest name. Rows with a negative or non-numeric duration are ``invalid_metadata``, and so
is a line that is not valid UTF-8 (the reject names the manifest and line; the other lines are
read); a row repeating an earlier ``(audio_filepath, offset)`` is ``duplicate_row``. A manifest
that cannot be read (a symlink leaving the root: ``path_escape``; missing or unreadable:
``unreadable_metadata``) is one reject row naming it, and the other manifests are still read.

``text`` is a transcript (NeMo manifests are ASR manifests): the characters-per-second bounds
of the filters apply to it unless the row's ``task`` (or ``options.default_task``) declares a
caption.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

from dataprep.core.config import CorpusConfig
from dataprep.core.lang import base_lang
from dataprep.core.sample import Reject, SampleRef
from dataprep.corpora import register
from dataprep.corpora._common import (
    CorpusRoot,
    ReaderOptions,
    parse_float,
    parse_options,
    read_jsonl,
    reader_reject,
    resolve_audio,
)


class Options(ReaderOptions):
    check_exists: bool = True
    default_task: str | None = None  # extra.task of rows without one


KNOWN = {"audio_filepath", "text", "duration", "offset", "lang", "speaker", "label", "labels"}


def manifest_split(name: str) -> str | None:
    low = name.lower()
    for keys, split in ((("train",), "train"), (("dev", "val"), "val"), (("test", "eval"), "test")):
        if any(k in low for k in keys):
            return split
    return None


@register("nemo", Options)
def read_nemo(cfg: CorpusConfig) -> Iterator[SampleRef | Reject]:
    opts = parse_options(cfg, Options)
    root = CorpusRoot(cfg.root)
    license_ = opts.license
    check_exists = opts.check_exists
    default_task = opts.default_task
    if cfg.splits is not None:
        manifests = [m if m.endswith((".jsonl", ".json")) else f"{m}.jsonl" for m in cfg.splits]
    else:
        manifests = [n for n in root.list_dir("") if n.endswith((".jsonl", ".json"))]
    seen: set[tuple[str, float]] = set()
    for manifest in manifests:
        folder = posixpath.dirname(manifest)
        data = root.read_metadata(cfg, manifest)
        if isinstance(data, Reject):
            yield data
            continue
        for line_no, row, err in read_jsonl(data):
            where = f"{manifest}:{line_no}"
            if row is None:
                yield reader_reject(cfg, where, "invalid_metadata", err)
                continue
            item = _row(cfg, root, row, where, folder, check_exists, seen)
            if isinstance(item, Reject):
                yield item
                continue
            source_id, uri, duration, offset = item
            extra = {k: _hashable(v) for k, v in row.items() if k not in KNOWN}
            if default_task and "task" not in extra:
                extra["task"] = default_task
            extra["manifest"] = manifest
            labels = row.get("labels", row.get("label"))
            labels_t = (
                tuple(str(x) for x in labels)
                if isinstance(labels, list)
                else ((str(labels),) if labels else ())
            )
            text = row.get("text")
            yield SampleRef(
                corpus=cfg.name,
                source_id=source_id if offset is None else f"{source_id}@{offset:.3f}",
                audio=uri,
                text=str(text) if text is not None else None,
                lang=base_lang(row.get("lang")),
                labels=labels_t,
                speaker=str(row["speaker"]) if row.get("speaker") not in (None, "") else None,
                license=license_,
                split=manifest_split(posixpath.basename(manifest)),
                start_s=offset,
                end_s=(offset + duration) if (offset is not None and duration) else None,
                duration_s=duration,
                extra=tuple(sorted(extra.items())),
            )


def _row(cfg, root, row, where, folder, check_exists, seen):
    path = row.get("audio_filepath")
    if not isinstance(path, str) or not path.strip():
        return reader_reject(cfg, where, "invalid_metadata", f"{where}: audio_filepath missing")
    duration = parse_float(row.get("duration")) if "duration" in row else None
    if "duration" in row and (duration is None or duration <= 0):
        return reader_reject(
            cfg, f"{path} ({where})", "invalid_metadata",
            f"{where}: duration {row.get('duration')!r} is not a positive number",
        )  # fmt: skip
    offset = parse_float(row.get("offset")) if row.get("offset") is not None else None
    if offset is not None and offset < 0:
        return reader_reject(
            cfg, f"{path} ({where})", "invalid_metadata", f"{where}: negative offset"
        )
    rel = posixpath.join(folder, path) if folder and not path.startswith("/") else path
    resolved = resolve_audio(cfg, root, rel, check_exists)
    if isinstance(resolved, Reject):
        return resolved
    source_id, uri = resolved
    key = (source_id, offset or 0.0)
    if key in seen:
        return reader_reject(
            cfg, f"{source_id} ({where})", "duplicate_row", f"{where}: {path} already listed"
        )
    seen.add(key)
    return source_id, uri, duration, offset


def _hashable(v):
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v
