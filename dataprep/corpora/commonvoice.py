"""Mozilla Common Voice (Ardila et al., LREC 2020), any release with the v17 tsv columns.

Source: https://commonvoice.mozilla.org — crowd-sourced read speech, 100+ locales.
License: CC0-1.0. Layout (one locale folder, as in the release tarballs)::

    <locale>/clips/common_voice_<locale>_<id>.mp3
    <locale>/{validated,train,dev,test,invalidated,other}.tsv
        client_id path sentence_id sentence sentence_domain up_votes down_votes age gender
        accents variant locale segment
    <locale>/clip_durations.tsv   clip duration[ms]

``root`` may be one locale folder or a folder of locale folders (all are read, sorted).
``cfg.splits`` names the tsv files to read (default ``train dev test``); ``dev`` maps to split
``val``; other tsvs (``validated``...) give split None. A clip listed in several tsvs is yielded
once (first tsv wins). ``options``: ``locales`` (subset), ``min_votes_margin`` (keep rows with
``up_votes - down_votes >=`` this, default None: trust the tsv). ``speaker`` is the client_id.
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
    read_table,
    reader_reject,
    resolve_audio,
)


class Options(ReaderOptions):
    locales: tuple[str, ...] | None = None  # subset of locale folders
    min_votes_margin: int | float | None = None  # keep rows with up - down >= this
    license: str | None = "CC0-1.0"
    check_exists: bool = True


TSV_SPLIT = {"train": "train", "dev": "val", "test": "test"}


@register("commonvoice", Options)
def read_commonvoice(cfg: CorpusConfig) -> Iterator[SampleRef | Reject]:
    opts = parse_options(cfg, Options)
    root = CorpusRoot(cfg.root)
    tsvs = cfg.splits if cfg.splits is not None else ("train", "dev", "test")
    wanted = opts.locales
    margin = opts.min_votes_margin
    license_ = opts.license
    check_exists = opts.check_exists
    if root.isfile(f"{tsvs[0]}.tsv") or root.isfile("validated.tsv"):
        locale_dirs = [""]
    else:
        locale_dirs = [
            d
            for d in root.subdirs()
            if root.isfile(f"{d}/validated.tsv") or root.isfile(f"{d}/{tsvs[0]}.tsv")
        ]
    if wanted is not None:
        locale_dirs = [
            d for d in locale_dirs if (d or posixpath.basename(root.root)) in set(wanted)
        ]
    for loc_dir in locale_dirs:
        yield from _read_locale(cfg, root, loc_dir, tsvs, margin, license_, check_exists)


def _read_locale(cfg, root, loc_dir, tsvs, margin, license_, check_exists):
    prefix = f"{loc_dir}/" if loc_dir else ""
    durations = _durations(root, prefix)
    seen: set[str] = set()
    for tsv in tsvs:
        if not root.isfile(f"{prefix}{tsv}.tsv"):
            continue
        text = root.read_text(f"{prefix}{tsv}.tsv")
        for line_no, row in enumerate(read_table(text, "\t"), start=2):
            path = row.get("path", "").strip()
            sentence = row.get("sentence", "")
            if not path:
                yield reader_reject(
                    cfg,
                    f"{prefix}{tsv}.tsv:{line_no}",
                    "invalid_metadata",
                    f"{prefix}{tsv}.tsv line {line_no}: empty path",
                )
                continue
            if path in seen:
                continue
            seen.add(path)
            if margin is not None:
                up = parse_float(row.get("up_votes")) or 0.0
                down = parse_float(row.get("down_votes")) or 0.0
                if up - down < float(margin):
                    yield reader_reject(
                        cfg,
                        f"{prefix}clips/{path}",
                        "low_votes",
                        f"up_votes {up:g} - down_votes {down:g} < {margin}",
                    )
                    continue
            resolved = resolve_audio(cfg, root, f"{prefix}clips/{path}", check_exists)
            if isinstance(resolved, Reject):
                yield resolved
                continue
            source_id, uri = resolved
            locale = row.get("locale", "").strip() or (loc_dir or posixpath.basename(root.root))
            extra = {
                "task": "asr",
                "locale": locale,
                "tsv": tsv,
                "sentence_id": row.get("sentence_id", "").strip() or None,
                "gender": row.get("gender", "").strip() or None,
                "age": row.get("age", "").strip() or None,
                "accents": row.get("accents", "").strip() or None,
            }
            yield SampleRef(
                corpus=cfg.name,
                source_id=source_id,
                audio=uri,
                text=sentence,
                lang=base_lang(locale),
                speaker=row.get("client_id", "").strip() or None,
                license=license_,
                split=TSV_SPLIT.get(tsv),
                duration_s=durations.get(path),
                extra=tuple(sorted((k, v) for k, v in extra.items() if v is not None)),
            )


def _durations(root: CorpusRoot, prefix: str) -> dict[str, float]:
    if not root.isfile(f"{prefix}clip_durations.tsv"):
        return {}
    out = {}
    for row in read_table(root.read_text(f"{prefix}clip_durations.tsv"), "\t"):
        ms = parse_float(row.get("duration[ms]"))
        if row.get("clip") and ms is not None:
            out[row["clip"].strip()] = ms / 1000.0
    return out
