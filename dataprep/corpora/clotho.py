"""Clotho audio captioning dataset (Drossos et al., ICASSP 2020), v2.1 layout.

Source: https://zenodo.org/records/4783391 — 15-30 s freesound clips, 5 captions each.
License: per clip in ``clotho_metadata_*.csv`` (CC0 / CC BY / CC BY-NC); captions Tampere Univ.
Layout::

    clotho_captions_{development,validation,evaluation}.csv   file_name,caption_1..caption_5
    clotho_metadata_{development,validation,evaluation}.csv   file_name,keywords,...,license
    {development,validation,evaluation}/<file_name>            (the unpacked 7z archives)

``cfg.splits`` picks the parts (default all present): development -> ``train``,
validation -> ``val``, evaluation -> ``test``. ``text`` is caption_1, ``captions`` the others.
Metadata keywords become ``extra.keywords``; the per-clip license wins over ``options.license``.
"""

from __future__ import annotations

from collections.abc import Iterator

from dataprep.core.config import CorpusConfig
from dataprep.core.sample import Reject, SampleRef
from dataprep.corpora import register
from dataprep.corpora._common import (
    CorpusRoot,
    ReaderOptions,
    parse_options,
    read_table,
    reader_reject,
    resolve_audio,
)


class Options(ReaderOptions):
    audio_dir: str = "{part}"  # template with {part}
    check_exists: bool = True


PARTS = {"development": "train", "validation": "val", "evaluation": "test"}


@register("clotho", Options)
def read_clotho(cfg: CorpusConfig) -> Iterator[SampleRef | Reject]:
    opts = parse_options(cfg, Options)
    root = CorpusRoot(cfg.root)
    audio_dir = opts.audio_dir
    default_license = opts.license
    check_exists = opts.check_exists
    parts = cfg.splits if cfg.splits is not None else tuple(
        p for p in PARTS if root.isfile(f"clotho_captions_{p}.csv")
    )  # fmt: skip
    for part in parts:
        meta = _metadata(root, f"clotho_metadata_{part}.csv")
        captions_csv = f"clotho_captions_{part}.csv"
        for line_no, row in enumerate(read_table(_read(root, captions_csv), ","), start=2):
            fname = row.get("file_name", "").strip()
            caps = [row.get(f"caption_{i}", "").strip() for i in range(1, 6)]
            caps = [c for c in caps if c]
            if not fname or not caps:
                yield reader_reject(
                    cfg,
                    fname or f"{captions_csv}:{line_no}",
                    "invalid_metadata",
                    f"{captions_csv} line {line_no}: file_name or all captions empty",
                )
                continue
            resolved = resolve_audio(
                cfg, root, f"{audio_dir.format(part=part)}/{fname}", check_exists
            )
            if isinstance(resolved, Reject):
                yield resolved
                continue
            source_id, uri = resolved
            m = meta.get(fname, {})
            extra = {"task": "caption", "part": part}
            if m.get("keywords"):
                extra["keywords"] = tuple(k for k in m["keywords"].split(";") if k)
            if m.get("sound_id"):
                extra["sound_id"] = m["sound_id"]
            yield SampleRef(
                corpus=cfg.name,
                source_id=source_id,
                audio=uri,
                text=caps[0],
                lang="en",
                license=m.get("license") or default_license,
                split=PARTS.get(part),
                captions=tuple(caps[1:]),
                extra=tuple(sorted(extra.items())),
            )


def _read(root: CorpusRoot, rel: str) -> str:
    try:
        return root.read_text(rel)
    except UnicodeDecodeError:
        # Some Clotho metadata files are not valid UTF-8 (freesound user names).
        return root.read_text(rel, encoding="latin-1")


def _metadata(root: CorpusRoot, rel: str) -> dict[str, dict[str, str]]:
    if not root.isfile(rel):
        return {}
    return {
        r["file_name"].strip(): r for r in read_table(_read(root, rel), ",") if r.get("file_name")
    }
