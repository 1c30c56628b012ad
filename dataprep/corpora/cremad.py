"""CREMA-D: Crowd-sourced Emotional Multimodal Actors Dataset (Cao et al., 2014).

Source: https://github.com/CheyneyComputerScience/CREMA-D — 7,442 clips, 91 actors, 12
sentences, 6 emotions. License: Open Database License / Database Contents License.
Layout::

    AudioWAV/<ActorID>_<Sentence>_<Emotion>_<Level>.wav     e.g. 1001_DFA_ANG_XX.wav
    VideoDemographics.csv    ActorID,Age,Sex,Race,Ethnicity
    SentenceFilenames.csv    Stimulus_Number,Filename[,Sentence]

Everything is in the file name: emotion (ANG DIS FEA HAP NEU SAD) becomes ``labels`` (full
English names), the intensity level (LO MD HI, XX unspecified) and the spoken sentence go to
``extra``; the text is left empty so captions come from templates. ``speaker`` is the actor.
The corpus has no splits: ``options.eval_actors`` maps those actors to ``test`` and the others to
``train`` (a speaker-independent held-out set, as ESC-50's ``eval_folds``); without it ``split``
is None (decided later by hash).
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
    read_table,
    reader_reject,
    resolve_audio,
)


class Options(ReaderOptions):
    license: str | None = "ODbL-1.0"
    audio_dir: str = "AudioWAV"
    eval_actors: tuple[str, ...] = ()  # actor ids mapped to test, the rest to train


EMOTIONS = {
    "ANG": "anger", "DIS": "disgust", "FEA": "fear",
    "HAP": "happy", "NEU": "neutral", "SAD": "sad",
}  # fmt: skip
LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
SENTENCES = {
    "IEO": "It's eleven o'clock", "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting", "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full", "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock", "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket", "ITS": "I think I've seen this before",
    "TSI": "The surface is slick", "WSI": "We'll stop in a couple of minutes",
}  # fmt: skip


@register("cremad", Options)
def read_cremad(cfg: CorpusConfig) -> Iterator[SampleRef | Reject]:
    opts = parse_options(cfg, Options)
    root = CorpusRoot(cfg.root)
    license_ = opts.license
    audio_dir = opts.audio_dir
    eval_actors = set(opts.eval_actors)
    sexes = {}
    if root.isfile("VideoDemographics.csv"):
        for row in read_table(root.read_text("VideoDemographics.csv"), ","):
            sexes[row.get("ActorID", "").strip()] = row.get("Sex", "").strip()
    sentences = dict(SENTENCES)
    if root.isfile("SentenceFilenames.csv"):
        for row in read_table(root.read_text("SentenceFilenames.csv"), ","):
            if row.get("Filename") and row.get("Sentence"):
                sentences[row["Filename"].strip()] = row["Sentence"].strip().rstrip(".")
    for name in root.list_dir(audio_dir):
        stem, ext = posixpath.splitext(name)
        if ext.lower() not in (".wav", ".flac", ".mp3"):
            continue
        parts = stem.split("_")
        if len(parts) != 4 or parts[2] not in EMOTIONS or parts[3] not in LEVELS:
            yield reader_reject(
                cfg,
                f"{audio_dir}/{name}",
                "invalid_metadata",
                f"file name {name!r} is not <Actor>_<Sentence>_<Emotion>_<Level>",
            )
            continue
        actor, sentence, emotion, level = parts
        resolved = resolve_audio(cfg, root, f"{audio_dir}/{name}", check_exists=False)
        if isinstance(resolved, Reject):
            yield resolved
            continue
        source_id, uri = resolved
        extra = {
            "task": "emotion",
            "sentence_code": sentence,
            "transcript": sentences.get(sentence),
            "intensity": LEVELS[level],
            "gender": sexes.get(actor) or None,
        }
        yield SampleRef(
            corpus=cfg.name,
            source_id=source_id,
            audio=uri,
            lang="en",
            labels=(EMOTIONS[emotion],),
            speaker=actor,
            split=("test" if actor in eval_actors else "train") if eval_actors else None,
            license=license_,
            extra=tuple(sorted((k, v) for k, v in extra.items() if v is not None)),
        )
