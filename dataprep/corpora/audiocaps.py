"""AudioCaps: captions for AudioSet clips (Kim et al., NAACL 2019).

Source: https://github.com/cdjkim/audiocaps — csv metadata only; the audio has to be
downloaded from YouTube by the user, so file names and formats vary between downloads.
License: metadata MIT; audio belongs to the YouTube uploaders (``options.license`` to override).
Layout::

    <root>/{train,val,test}.csv          audiocap_id,youtube_id,start_time,caption
    <root>/audio/{train,val,test}/<youtube_id>.<any audio ext>

Rows sharing a ``youtube_id`` are one clip with several captions: ``text`` is the caption with
the lowest ``audiocap_id``, ``captions`` the others (in id order). ``cfg.splits`` picks the csv
files (default: those present). ``options``: ``audio_dir`` (template with ``{split}``),
``clip_s`` — when set, the audio files are the full videos and the reader selects
``[start_time, start_time + clip_s]``; by default files are already cut and ``start_time`` is
only informational. Audio is found as ``<id>.<ext>``, ``Y<id>.<ext>`` or ``<id>_<start>.<ext>``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

from dataprep.core.config import CorpusConfig
from dataprep.core.sample import Reject, SampleRef
from dataprep.corpora import register
from dataprep.corpora._common import (
    AUDIO_EXTENSIONS,
    CorpusRoot,
    ReaderOptions,
    parse_float,
    parse_options,
    read_table,
    reader_reject,
    resolve_audio,
)


class Options(ReaderOptions):
    audio_dir: str = "audio/{split}"  # template with {split}
    clip_s: float | None = None  # clip length when the CSV has no end time
    license: str | None = "YouTube (AudioCaps metadata MIT)"
    check_exists: bool = True


SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "test": "test"}


@register("audiocaps", Options)
def read_audiocaps(cfg: CorpusConfig) -> Iterator[SampleRef | Reject]:
    opts = parse_options(cfg, Options)
    root = CorpusRoot(cfg.root)
    audio_dir = opts.audio_dir
    clip_s = opts.clip_s
    license_ = opts.license
    check_exists = opts.check_exists
    csvs = (
        cfg.splits
        if cfg.splits is not None
        else tuple(s for s in ("train", "val", "test") if root.isfile(f"{s}.csv"))
    )
    for csv_name in csvs:
        clips: dict[str, list[tuple[int, str, str]]] = {}
        for line_no, row in enumerate(read_table(root.read_text(f"{csv_name}.csv"), ","), start=2):
            ytid = row.get("youtube_id", "").strip()
            caption = row.get("caption", "").strip()
            try:
                cap_id = int(row.get("audiocap_id", ""))
            except ValueError:
                cap_id = line_no
            if not ytid or not caption:
                yield reader_reject(
                    cfg,
                    ytid or f"{csv_name}.csv:{line_no}",
                    "invalid_metadata",
                    f"{csv_name}.csv line {line_no}: youtube_id or caption empty",
                )
                continue
            clips.setdefault(ytid, []).append((cap_id, caption, row.get("start_time", "").strip()))
        folder = audio_dir.format(split=csv_name)
        names = root.list_dir(folder)
        for ytid in sorted(clips):
            rows = sorted(clips[ytid])
            start = parse_float(rows[0][2])
            fname = _find_audio(names, ytid, rows[0][2]) if names else None
            if fname is None and not names and check_exists:
                fname = _probe(root, folder, ytid, rows[0][2])
            if fname is None and not check_exists:
                fname = f"{ytid}.wav"
            if fname is None:
                yield reader_reject(
                    cfg,
                    posixpath.join(folder, ytid),
                    "missing_file",
                    f"no audio file for youtube_id {ytid} in {folder}/ (tried {ytid}.*, Y{ytid}.*)",
                )
                continue
            resolved = resolve_audio(cfg, root, posixpath.join(folder, fname), check_exists=False)
            if isinstance(resolved, Reject):
                yield resolved
                continue
            source_id, uri = resolved
            captions = tuple(c for _, c, _ in rows)
            yield SampleRef(
                corpus=cfg.name,
                source_id=source_id,
                audio=uri,
                text=captions[0],
                lang="en",
                license=license_,
                split=SPLIT_NAMES.get(csv_name),
                start_s=start if clip_s is not None else None,
                end_s=(start + clip_s) if (clip_s is not None and start is not None) else None,
                captions=captions[1:],
                extra=tuple(
                    sorted(
                        {
                            "task": "caption",
                            "youtube_id": ytid,
                            "start_time": start,
                            "audiocap_ids": tuple(i for i, _, _ in rows),
                        }.items()
                    )
                ),
            )


def _find_audio(names: list[str], ytid: str, start: str) -> str | None:
    stems = (ytid, f"Y{ytid}", f"{ytid}_{start}")
    for stem in stems:
        for name in names:
            base, ext = posixpath.splitext(name)
            if base == stem and ext.lower() in AUDIO_EXTENSIONS:
                return name
    return None


def _probe(root: CorpusRoot, folder: str, ytid: str, start: str) -> str | None:
    # Without a directory listing (plain HTTP) the extension has to be guessed.
    for stem in (ytid, f"Y{ytid}", f"{ytid}_{start}"):
        for ext in AUDIO_EXTENSIONS:
            if root.isfile(posixpath.join(folder, stem + ext)):
                return stem + ext
    return None
