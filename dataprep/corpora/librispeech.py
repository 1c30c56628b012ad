"""LibriSpeech ASR corpus (Panayotov et al., ICASSP 2015).

Source: https://www.openslr.org/12 — read English audiobooks, 16 kHz FLAC. License: CC BY 4.0.
Layout (``root`` is the folder holding ``LibriSpeech/``, or ``LibriSpeech/`` itself)::

    LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   "<utt-id> TEXT"
    LibriSpeech/SPEAKERS.TXT     ;ID |SEX| SUBSET |MINUTES| NAME

``cfg.splits`` lists the subsets (default: all present). ``train-*`` subsets map to split
``train``, ``dev-*`` to ``val``, ``test-*`` to ``test``. Transcripts are upper case without
punctuation, as released; ``options.lowercase`` lower-cases them.
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
    reader_reject,
    resolve_audio,
)


class Options(ReaderOptions):
    folder_in_archive: str = "LibriSpeech"
    lowercase: bool = False
    license: str | None = "CC-BY-4.0"
    check_exists: bool = True


def subset_split(subset: str) -> str | None:
    for prefix, split in (("train", "train"), ("dev", "val"), ("test", "test")):
        if subset.startswith(prefix):
            return split
    return None


@register("librispeech", Options)
def read_librispeech(cfg: CorpusConfig) -> Iterator[SampleRef | Reject]:
    opts = parse_options(cfg, Options)
    root = CorpusRoot(cfg.root)
    folder = opts.folder_in_archive
    base = folder if folder in root.subdirs() else ""
    pre = f"{base}/" if base else ""
    lowercase = opts.lowercase
    license_ = opts.license
    check_exists = opts.check_exists
    genders = _speakers(root, f"{pre}SPEAKERS.TXT")
    subsets = cfg.splits if cfg.splits is not None else tuple(root.subdirs(base))
    for subset in subsets:
        for speaker in root.subdirs(f"{pre}{subset}"):
            for chapter in root.subdirs(f"{pre}{subset}/{speaker}"):
                folder_rel = f"{pre}{subset}/{speaker}/{chapter}"
                trans = f"{folder_rel}/{speaker}-{chapter}.trans.txt"
                if not root.isfile(trans):
                    yield reader_reject(
                        cfg, trans, "missing_file", f"transcript {trans} missing; chapter skipped"
                    )
                    continue
                for line_no, line in enumerate(root.read_text(trans).splitlines(), start=1):
                    if not line.strip():
                        continue
                    utt, _, text = line.strip().partition(" ")
                    if not text.strip():
                        yield reader_reject(
                            cfg,
                            f"{folder_rel}/{utt}.flac",
                            "invalid_metadata",
                            f"{trans} line {line_no}: no transcript",
                        )
                        continue
                    resolved = resolve_audio(cfg, root, f"{folder_rel}/{utt}.flac", check_exists)
                    if isinstance(resolved, Reject):
                        yield resolved
                        continue
                    source_id, uri = resolved
                    extra = {"task": "asr", "subset": subset, "chapter": chapter}
                    if speaker in genders:
                        extra["gender"] = genders[speaker]
                    yield SampleRef(
                        corpus=cfg.name,
                        source_id=source_id,
                        audio=uri,
                        text=text.strip().lower() if lowercase else text.strip(),
                        lang="en",
                        speaker=speaker,
                        license=license_,
                        split=subset_split(subset),
                        extra=tuple(sorted(extra.items())),
                    )


def _speakers(root: CorpusRoot, rel: str) -> dict[str, str]:
    if not root.isfile(rel):
        return {}
    out = {}
    for line in root.read_text(rel).splitlines():
        if line.startswith(";") or "|" not in line:
            continue
        cols = [c.strip() for c in line.split("|")]
        if len(cols) >= 2 and cols[0]:
            out[cols[0]] = cols[1]
    return out
