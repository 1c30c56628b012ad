"""Multilingual Spoken Words Corpus layout (MSWC; Mazumder et al., NeurIPS 2021 datasets).

Source: https://mlcommons.org/en/multilingual-spoken-words/ — 1-s keyword clips in 50
languages, extracted from Common Voice by forced alignment. License: CC BY 4.0.
Layout — ``root`` holds one folder per language (ISO 639 code)::

    <lang>/clips/<word>/<clip>.opus       48 kHz opus, one spoken word
    <lang>/<lang>_splits.csv              SET,LINK,WORD,VALID,SPEAKER,GENDER (optional)
    <lang>/<lang>_{train,dev,test}.csv    LINK,WORD,VALID,SPEAKER,GENDER   (optional)

The split CSVs may also sit in ``<lang>/splits/``. ``LINK`` is ``<word>/<clip>.opus``
relative to ``clips/``; ``SET`` is ``TRAIN``/``DEV``/``TEST``. A clip listed in a split CSV
gets that split (``DEV`` -> ``val``) and its speaker; a clip in no CSV gets no split (the
build decides it by a hash of the speaker/source) — unless ``options.listed_only``, where it is
not read. ``labels`` and ``text`` = the word (the folder name); ``lang`` = the folder's
language. Languages the text language detector does not know rely on this declared language.
"""

from __future__ import annotations

from collections.abc import Iterator

from dataprep.core.config import CorpusConfig
from dataprep.core.sample import Reject, SampleRef
from dataprep.corpora import register
from dataprep.corpora._common import (
    AUDIO_EXTENSIONS,
    CorpusRoot,
    ReaderOptions,
    parse_options,
    read_table,
    resolve_audio,
)

_SPLITS = {"TRAIN": "train", "DEV": "val", "VALID": "val", "TEST": "test"}


class Options(ReaderOptions):
    license: str | None = "CC-BY-4.0"
    languages: tuple[str, ...] | None = None  # subset of language folders
    listed_only: bool = False  # read only the clips a split CSV lists


def _split_rows(root: CorpusRoot, lang: str) -> dict[str, tuple[str, str | None]]:
    """``LINK -> (split, speaker)`` from the language's split CSVs (either form)."""
    out: dict[str, tuple[str, str | None]] = {}
    for folder in (lang, f"{lang}/splits"):
        if root.isfile(f"{folder}/{lang}_splits.csv"):
            for row in read_table(root.read_text(f"{folder}/{lang}_splits.csv"), ","):
                split = _SPLITS.get(row.get("SET", "").strip().upper())
                if split and row.get("LINK"):
                    out[row["LINK"].strip()] = (split, row.get("SPEAKER", "").strip() or None)
        for name, split in (("train", "train"), ("dev", "val"), ("test", "test")):
            if root.isfile(f"{folder}/{lang}_{name}.csv"):
                for row in read_table(root.read_text(f"{folder}/{lang}_{name}.csv"), ","):
                    if row.get("LINK"):
                        speaker = row.get("SPEAKER", "").strip() or None
                        out.setdefault(row["LINK"].strip(), (split, speaker))
    return out


@register("mswc", Options)
def read_mswc(cfg: CorpusConfig) -> Iterator[SampleRef | Reject]:
    opts = parse_options(cfg, Options)
    root = CorpusRoot(cfg.root)
    langs = [d for d in root.subdirs() if "clips" in root.subdirs(d)]
    if opts.languages is not None:
        langs = [d for d in langs if d in set(opts.languages)]
    for lang in langs:
        listed = _split_rows(root, lang)
        for word in root.subdirs(f"{lang}/clips"):
            for name in root.list_dir(f"{lang}/clips/{word}"):
                if not name.lower().endswith(AUDIO_EXTENSIONS):
                    continue
                split, speaker = listed.get(f"{word}/{name}", (None, None))
                if split is None and opts.listed_only:
                    continue
                rel = f"{lang}/clips/{word}/{name}"
                resolved = resolve_audio(cfg, root, rel, check_exists=False)
                if isinstance(resolved, Reject):
                    yield resolved
                    continue
                yield SampleRef(
                    corpus=cfg.name,
                    source_id=resolved[0],
                    audio=resolved[1],
                    text=word,
                    lang=lang,
                    labels=(word,),
                    speaker=speaker,
                    license=opts.license,
                    split=split,
                    extra=(("task", "kws"),),
                )
