"""RAVDESS: Ryerson Audio-Visual Database of Emotional Speech and Song (Livingstone 2018).

Source: https://zenodo.org/records/1188976 — 24 actors, speech and song. License: CC BY-NC-SA 4.0.
Layout (``Audio_Speech_Actors_01-24.zip`` / ``Audio_Song_Actors_01-24.zip`` unpacked)::

    Actor_<NN>/<modality>-<channel>-<emotion>-<intensity>-<statement>-<repetition>-<actor>.wav

The seven two-digit fields: modality (01 AV, 02 video, 03 audio), vocal channel (01 speech,
02 song), emotion (01 neutral, 02 calm, 03 happy, 04 sad, 05 angry, 06 fearful, 07 disgust,
08 surprised), intensity (01 normal, 02 strong; neutral has no strong), statement (01 "Kids are
talking by the door", 02 "Dogs are sitting by the door"), repetition, actor (odd male, even
female). A name that breaks these rules is a reader reject. Labels: the emotion name.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Literal

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
    license: str | None = "CC-BY-NC-SA-4.0"
    channels: tuple[Literal["speech", "song"], ...] = ("speech", "song")


MODALITY = {"01": "audio-video", "02": "video", "03": "audio"}
CHANNEL = {"01": "speech", "02": "song"}
EMOTION = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}  # fmt: skip
INTENSITY = {"01": "normal", "02": "strong"}
STATEMENT = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}


def parse_name(stem: str) -> dict[str, str] | None:
    """The seven fields of a RAVDESS file name, or None when it does not follow them."""
    parts = stem.split("-")
    if len(parts) != 7 or not all(len(p) == 2 and p.isdigit() for p in parts):
        return None
    mod, chan, emo, inten, stmt, rep, actor = parts
    if (
        mod not in MODALITY or chan not in CHANNEL or emo not in EMOTION
        or inten not in INTENSITY or stmt not in STATEMENT or not 1 <= int(actor) <= 24
        or (emo == "01" and inten == "02")
    ):  # fmt: skip
        return None
    return {
        "modality": MODALITY[mod],
        "channel": CHANNEL[chan],
        "emotion": EMOTION[emo],
        "intensity": INTENSITY[inten],
        "statement": STATEMENT[stmt],
        "repetition": rep,
        "actor": actor,
        "gender": "male" if int(actor) % 2 else "female",
    }


@register("ravdess", Options)
def read_ravdess(cfg: CorpusConfig) -> Iterator[SampleRef | Reject]:
    opts = parse_options(cfg, Options)
    root = CorpusRoot(cfg.root)
    license_ = opts.license
    channels = set(opts.channels)
    for actor_dir in root.subdirs():
        if not actor_dir.startswith("Actor_"):
            continue
        for name in root.list_dir(actor_dir):
            stem, ext = posixpath.splitext(name)
            if ext.lower() != ".wav":
                continue
            fields = parse_name(stem)
            if fields is None or f"Actor_{fields['actor']}" != actor_dir:
                yield reader_reject(
                    cfg,
                    f"{actor_dir}/{name}",
                    "invalid_metadata",
                    f"{name!r} is not a valid RAVDESS name for {actor_dir}",
                )
                continue
            if fields["channel"] not in channels or fields["modality"] == "video":
                continue
            resolved = resolve_audio(cfg, root, f"{actor_dir}/{name}", check_exists=False)
            if isinstance(resolved, Reject):
                yield resolved
                continue
            source_id, uri = resolved
            extra = dict(fields, task="emotion", transcript=fields["statement"])
            for k in ("emotion", "actor", "statement"):
                extra.pop(k)
            yield SampleRef(
                corpus=cfg.name,
                source_id=source_id,
                audio=uri,
                lang="en",
                labels=(fields["emotion"],),
                speaker=f"Actor_{fields['actor']}",
                license=license_,
                extra=tuple(sorted(extra.items())),
            )
