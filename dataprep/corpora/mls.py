"""Multilingual LibriSpeech (Pratap et al., Interspeech 2020).

Source: https://www.openslr.org/94 — read audiobooks in 8 languages. License: CC BY 4.0.
Layout (``root`` is one language folder, e.g. ``mls_german_opus``)::

    <split>/transcripts.txt        "<speaker>_<book>_<utt>\t<text>"
    <split>/audio/<speaker>/<book>/<speaker>_<book>_<utt>.opus   (.flac in the flac releases)
    <split>/segments.txt           (optional, source urls and times; not needed)

``cfg.splits`` picks split folders (default ``train dev test``; ``dev`` -> ``val``).
``options.lang`` gives the ISO code; by default it is taken from the folder name
(``mls_german_opus`` -> ``de``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

from dataprep.core.config import CorpusConfig
from dataprep.core.sample import Reject, SampleRef
from dataprep.corpora import register
from dataprep.corpora._common import (
    CorpusRoot,
    ReaderOptions,
    parse_options,
    reader_reject,
    resolve_audio,
)


class Options(ReaderOptions):
    lang: str | None = None  # ISO code (default: from the folder name)
    extension: str | None = None  # force one audio extension
    license: str | None = "CC-BY-4.0"
    check_exists: bool = True


LANGS = {
    "english": "en", "german": "de", "dutch": "nl", "french": "fr",
    "spanish": "es", "italian": "it", "portuguese": "pt", "polish": "pl",
}  # fmt: skip
SPLITS = {"train": "train", "dev": "val", "test": "test"}


def _lang_from_root(root: CorpusRoot) -> str | None:
    for part in posixpath.basename(root.root).lower().split("_"):
        if part in LANGS:
            return LANGS[part]
    return None


@register("mls", Options)
def read_mls(cfg: CorpusConfig) -> Iterator[SampleRef | Reject]:
    opts = parse_options(cfg, Options)
    root = CorpusRoot(cfg.root)
    lang = opts.lang or _lang_from_root(root)
    license_ = opts.license
    check_exists = opts.check_exists
    forced_ext = opts.extension
    for split in cfg.splits if cfg.splits is not None else ("train", "dev", "test"):
        trans = f"{split}/transcripts.txt"
        if not root.isfile(trans):
            continue
        for line_no, line in enumerate(root.read_text(trans).splitlines(), start=1):
            if not line.strip():
                continue
            utt, _, text = line.partition("\t")
            parts = utt.strip().split("_")
            if len(parts) != 3 or not text.strip():
                yield reader_reject(
                    cfg,
                    f"{trans}:{line_no}",
                    "invalid_metadata",
                    f"{trans} line {line_no}: expected '<speaker>_<book>_<utt>\\t<text>'",
                )
                continue
            speaker, book, _ = parts
            folder = f"{split}/audio/{speaker}/{book}"
            ext = forced_ext or _extension(root, folder, utt.strip())
            resolved = resolve_audio(cfg, root, f"{folder}/{utt.strip()}{ext}", check_exists)
            if isinstance(resolved, Reject):
                yield resolved
                continue
            source_id, uri = resolved
            yield SampleRef(
                corpus=cfg.name,
                source_id=source_id,
                audio=uri,
                text=text.strip(),
                lang=lang,
                speaker=speaker,
                license=license_,
                split=SPLITS.get(split),
                extra=(("book", book), ("task", "asr")),
            )


def _extension(root: CorpusRoot, folder: str, utt: str) -> str:
    for name in root.list_dir(folder):
        stem, ext = posixpath.splitext(name)
        if stem == utt:
            return ext
    return ".opus"
