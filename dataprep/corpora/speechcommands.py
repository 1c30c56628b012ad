"""Speech Commands keyword-spotting layout (Warden 2018), mono- or multilingual.

Source: https://arxiv.org/abs/1804.03209 — 1-s utterances of short words. License: CC BY 4.0.
Layout (one language) — ``root`` is that folder, or a folder of language folders::

    <label>/<speaker-hash>_nohash_<n>.wav
    validation_list.txt, testing_list.txt     "<label>/<file>" per line; the rest is train
    _background_noise_/*.wav                  long noise recordings (skipped unless asked)
    keywords.csv (optional, at the top)       lang,label,word: the word actually spoken

``labels`` = the label; ``text`` = the spoken word (from keywords.csv, else the label);
``speaker`` = the hash before ``_nohash_``. ``options.include_background`` yields the noise
files with label ``_background_noise_``.
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


class Options(ReaderOptions):
    include_background: bool = False  # also yield the noise clips
    license: str | None = "CC-BY-4.0"
    lang: str | None = None  # language of a single-language layout
    languages: tuple[str, ...] | None = None  # subset of language folders


BACKGROUND = "_background_noise_"


@register("speechcommands", Options)
def read_speechcommands(cfg: CorpusConfig) -> Iterator[SampleRef | Reject]:
    opts = parse_options(cfg, Options)
    root = CorpusRoot(cfg.root)
    license_ = opts.license
    background = opts.include_background
    words: dict[tuple[str, str], str] = {}
    if root.isfile("keywords.csv"):
        for row in read_table(root.read_text("keywords.csv"), ","):
            words[(row.get("lang", "").strip(), row.get("label", "").strip())] = row.get(
                "word", ""
            ).strip()
    if root.isfile("validation_list.txt") or root.isfile("testing_list.txt"):
        langs = [""]
    else:
        langs = [d for d in root.subdirs() if d != BACKGROUND]
    wanted = opts.languages
    if wanted is not None:
        langs = [d for d in langs if d in set(wanted)]
    if background and langs != [""] and BACKGROUND in root.subdirs():
        # Multilingual layouts share one noise folder at the top.
        for name in root.list_dir(BACKGROUND):
            if name.lower().endswith(AUDIO_EXTENSIONS):
                resolved = resolve_audio(cfg, root, f"{BACKGROUND}/{name}", check_exists=False)
                if isinstance(resolved, Reject):
                    yield resolved
                    continue
                yield SampleRef(
                    corpus=cfg.name,
                    source_id=resolved[0],
                    audio=resolved[1],
                    labels=(BACKGROUND,),
                    license=license_,
                    split="train",
                    extra=(("task", "noise"),),
                )
    for lang_dir in langs:
        lang = opts.lang if not lang_dir else lang_dir
        pre = f"{lang_dir}/" if lang_dir else ""
        lists = {}
        for fname, split in (("validation_list.txt", "val"), ("testing_list.txt", "test")):
            if root.isfile(f"{pre}{fname}"):
                for line in root.read_text(f"{pre}{fname}").splitlines():
                    if line.strip():
                        lists[line.strip()] = split
        for label in root.subdirs(lang_dir):
            if label == BACKGROUND and not background:
                continue
            for name in root.list_dir(f"{pre}{label}"):
                if not name.lower().endswith(AUDIO_EXTENSIONS):
                    continue
                resolved = resolve_audio(cfg, root, f"{pre}{label}/{name}", check_exists=False)
                if isinstance(resolved, Reject):
                    yield resolved
                    continue
                source_id, uri = resolved
                is_bg = label == BACKGROUND
                speaker = None if is_bg or "_nohash_" not in name else name.split("_nohash_")[0]
                yield SampleRef(
                    corpus=cfg.name,
                    source_id=source_id,
                    audio=uri,
                    text=None if is_bg else (words.get((lang or "", label)) or label),
                    lang=None if is_bg else lang,
                    labels=(label,),
                    speaker=speaker,
                    license=license_,
                    split=lists.get(f"{label}/{name}", "train"),
                    extra=(("task", "noise" if is_bg else "kws"),),
                )
