"""Input processing: SampleRefs -> samples (+ rejects). The body of one shard task.

Per input: decode -> normalize -> filter -> dedup/decontaminate -> log-mel -> audio views;
then, for every kept sample, text augmentation -> sample json (see ``SampleProcessor.process``).
Used by the shard build (dataprep.build.shard) and by the evaluation harness, so that
training and evaluation audio go through the same code and the same feature fingerprint.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dataprep import audio as audio_mod
from dataprep import dedup, filters
from dataprep import text as text_mod
from dataprep.core import features
from dataprep.core.config import DataConfig
from dataprep.core.hashing import stable_unit
from dataprep.core.sample import (
    AUDIO,
    KIND_ORIGINAL,
    MEL,
    META,
    TEXT,
    WAVE,
    Reject,
    SampleMeta,
    SampleRef,
    TextEntry,
    canonical_meta,
    canonical_update,
    ref_source,
    sample_key,
)
from dataprep.corpora._common import CorpusRoot

log = logging.getLogger(__name__)

_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "dev": "val",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "eval": "test",
    "test": "test",
}


def assign_split(ref: SampleRef, val_fraction: float, test_fraction: float, salt: str) -> str:
    """The corpus's own split when it has one; otherwise a hash of the speaker (or source), so
    one speaker never lands in two splits."""
    if ref.split:
        mapped = _SPLIT_ALIASES.get(ref.split.lower())
        if mapped:
            return mapped
    unit = ref.speaker or ref.source_id
    u = stable_unit(salt, ref.corpus, unit)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


@dataclass
class ProcessResult:
    samples: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


class SampleProcessor:
    """Turns one SampleRef into sample dicts or reject rows. Set up once per task.

    ``eval_index``: a :class:`dedup.DedupIndex` of evaluation clips; training inputs matching
    it are rejected with reason ``eval_overlap``. ``local_index``: dedup within this task
    (cross-task duplicates are resolved when the build is finalized).
    """

    def __init__(
        self,
        cfg: DataConfig,
        augment: bool = True,
        eval_index: Any | None = None,
        split_of: Any | None = None,
        keep_wave: bool = False,
    ) -> None:
        self.cfg = cfg
        self.keep_wave = keep_wave  # samples also hold WAVE (in memory only), for curation
        self.fcfg = cfg.features
        self.bcfg = cfg.build
        self.fingerprint = features.feature_fingerprint(self.fcfg)
        # Samples record their audio relative to its corpus root, so shards do not depend on
        # where the corpora (or the checkout holding them) live.
        self.roots = {c.name: CorpusRoot(c.root) for c in self.bcfg.corpora}
        self.logmel = features.make_featurizer(self.fcfg)
        self.fp_from_mel = dedup.shares_fingerprint_mel(self.fcfg)
        self.eval_index = eval_index
        dc = self.bcfg.dedup
        self.local_index = (
            dedup.DedupIndex(near_threshold=dc.near_threshold, exact=dc.exact, near=dc.near)
            if dc.exact or dc.near
            else None
        )
        self.text_aug = None
        self.audio_aug = None
        acfg = self.bcfg.augment
        if augment and (acfg.templates or acfg.nlpaug or acfg.llm):
            from dataprep.augment import TextAugmenter

            self.text_aug = TextAugmenter(acfg)
        if augment and acfg.audio_views > 0:
            from dataprep.augment import AudioAugmenter

            self.audio_aug = AudioAugmenter(acfg, self.fcfg.sample_rate_hz)

    def close(self) -> None:
        if self.text_aug is not None:
            self.text_aug.close()

    # -- text -------------------------------------------------------------------------------
    def _text_and_lang(
        self, ref: SampleRef
    ) -> tuple[str | None, str | None, str | None, list[str]]:
        """Normalized text, the sample's language, the detected language worth comparing
        (None when the detector is not confident enough to contradict the corpus), flags."""
        text = text_mod.normalize_text(ref.text, ref.lang) if ref.text else None
        lang, detected = filters.resolve_language(ref, text, self.bcfg.filters)
        return text, lang, detected, list(filters.text_flags(ref, detected, self.bcfg.filters))

    # -- inputs ---------------------------------------------------------------------------
    def __call__(self, ref: SampleRef, split: str) -> ProcessResult:
        """One input (the evaluation harness's call); :meth:`process` with a list of one."""
        return self.process([ref], split)

    def process(self, refs: Iterable[SampleRef], split: str) -> ProcessResult:
        """The inputs of one shard task, in order: their samples (each followed by its audio
        views) and rejects.

        Two passes: the audio work of every input (decode, filters, dedup, log-mel, views),
        then the text augmentation of every kept sample back to back. nlpaug, WordNet and the
        templates are Python-object work that ran ~2x slower interleaved with the FFTs, whose
        buffers evict them from the CPU caches (bench/augment.py). The global ``random`` /
        ``numpy.random`` streams that the augmenters seed are saved once per call and
        restored at its end (:func:`dataprep.augment.text.seeded`; its lock is held for the
        call, so another thread's augmenter in this process waits for it).
        """
        res = ProcessResult()
        groups: list[_Group] = []
        with self._rng_saved():
            for ref in refs:
                self._audio_pass(ref, split, res, groups)
            for g in groups:
                rej = self._text_pass(g)
                if rej is None:
                    res.samples.extend(g.samples)
                else:
                    res.rejects.append(rej)
            if self.text_aug is not None:
                res.rejects.extend(getattr(self.text_aug, "drain_rejects", list)())
        return res

    def _rng_saved(self) -> Any:
        if self.text_aug is None and self.audio_aug is None:
            return contextlib.nullcontext()
        from dataprep.augment.text import seeded

        return seeded(None)

    def _audio_pass(
        self, ref: SampleRef, split: str, res: ProcessResult, groups: list[_Group]
    ) -> None:
        acfg = self.bcfg.audio
        # A transcript covers its whole utterance: one segment, never windows (issue 19).
        whole_s = acfg.max_transcript_s if ref.text and filters.is_transcript(ref) else None
        try:
            segments = audio_mod.load_segments(ref, acfg, self.fcfg.sample_rate_hz, whole_s)
        except Exception as e:  # noqa: BLE001 - one policy at the boundary: a reject row
            res.rejects.append(filters.decode_reject(ref, e))
            return
        text, lang, detected, text_flags = self._text_and_lang(ref)
        # Clips of one source recording (or one declared group) are never each other's negatives.
        group = sample_key(ref.corpus, str(ref.extra_dict().get("group") or ref.source_id))
        for seg in segments:
            seg_src = _segment_source(ref, seg, len(segments))
            got = filters.check_segment(ref, seg, text, detected, self.bcfg.filters)
            if got is None:
                flags = sorted(set(text_flags) | set(filters.audio_flags(seg, self.bcfg.filters)))
                got = self._make_group(ref, seg, text, lang, split, group, flags, seg_src)
            if isinstance(got, Reject):
                res.rejects.append(filters.at_source(got, seg_src))
                continue
            if self.audio_aug is not None:
                self._add_views(got, seg.wave)
            groups.append(got)

    def _dedup_reject(self, ref: SampleRef, key: str, pcm: str, fp: Any) -> Reject | None:
        """``eval_overlap`` against the evaluation index, then ``duplicate`` within the task."""
        dcfg = self.bcfg.dedup
        if self.eval_index is not None and dcfg.decontaminate:
            match = self.eval_index.match(pcm, fp)
            if match is not None:
                return dedup.eval_overlap_reject(ref, match)
        if self.local_index is not None:
            dup = self.local_index.add(key, pcm, fp if dcfg.near else None)
            if dup is not None:
                return dedup.duplicate_reject(ref, dup)
        return None

    def _texts(self, ref: SampleRef, text: str | None, lang: str | None) -> list[TextEntry]:
        """The corpus's own texts: transcript/caption, else the labels, then extra captions."""
        texts: list[TextEntry] = []
        corpus_src = {"source": "corpus"}
        if text:
            texts.append(
                {"text": text, "lang": lang, "kind": KIND_ORIGINAL, "provenance": corpus_src}
            )
        if not texts and ref.labels:
            # A labeled clip without caption: its class names are the corpus's own text.
            label_text = ", ".join(label.replace("_", " ") for label in ref.labels)
            texts.append(
                {"text": label_text, "lang": "en", "kind": KIND_ORIGINAL,
                 "provenance": {"source": "labels"}}
            )  # fmt: skip
        for cap in ref.captions:
            cap_n = text_mod.normalize_text(cap, lang)
            if cap_n and cap_n != text:
                texts.append(
                    {"text": cap_n, "lang": lang, "kind": KIND_ORIGINAL,
                     "provenance": {"source": "corpus"}}
                )  # fmt: skip
        return texts

    def _make_group(
        self,
        ref: SampleRef,
        seg: Any,
        text: str | None,
        lang: str | None,
        split: str,
        group: str,
        flags: list[str],
        source: str,
    ) -> _Group | Reject:
        """The kept segment's sample (log-mel, json before text augmentation), or why not."""
        key = sample_key(ref.corpus, ref.source_id, (seg.start_s, seg.end_s))
        pcm = dedup.pcm_sha1(seg.wave)
        fp, mel = self._fingerprint(seg.wave)
        rej = self._dedup_reject(ref, key, pcm, fp)
        if rej is not None:
            return rej
        meta: SampleMeta = {
            "id": key,
            "corpus": ref.corpus,
            "source_id": ref.source_id,
            "source_uri": self._source_uri(ref),
            "segment": [round(seg.start_s, 3), round(seg.end_s, 3)],
            "lang": lang,
            "duration": round(len(seg.wave) / self.fcfg.sample_rate_hz, 4),
            "sample_rate": self.fcfg.sample_rate_hz,
            "labels": list(ref.labels),
            "speaker": ref.speaker,
            "license": ref.license,
            "split": split,
            "group": group,
            "audio_sha1": pcm,
            "audio_fp": dedup.fingerprint_to_hex(fp),
            "feature_fingerprint": self.fingerprint,
            "texts": self._texts(ref, text, lang),
            "flags": flags,
            "stats": {k: _round(v) for k, v in sorted(seg.stats.items())},
        }
        meta["attributes"] = {k: v for k, v in ref.extra_dict().items() if _jsonable(v)}
        if self.text_aug is None and not meta["texts"] and self.bcfg.filters.require_text:
            return filters.no_text_reject(ref)  # nothing can add one: reject now
        return _Group(ref, source, meta, [self._sample(key, seg.wave, mel)], [{}])

    def _source_uri(self, ref: SampleRef) -> str:
        root = self.roots.get(ref.corpus)
        rel = root.relative_uri(ref.audio) if root is not None else None
        return ref.audio if rel is None else rel  # outside every root (evaluation): as given

    def _fingerprint(self, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The audio fingerprint and, on the default features, the mel it was read from (the
        fingerprint reads the power mel the features take their log of: one FFT, not two)."""
        if not self.fp_from_mel:
            return dedup.audio_fingerprint(wave, self.fcfg.sample_rate_hz), None
        power = self.logmel.power(wave)
        return dedup.mel_fingerprint(power), self.logmel.from_power(power)

    def _sample(self, key: str, wave: np.ndarray, mel: np.ndarray | None = None) -> dict[str, Any]:
        """A sample without its json and text yet (:meth:`_text_pass` sets them)."""
        mel = self.logmel(wave) if mel is None else mel
        sample: dict[str, Any] = {"__key__": key, MEL: mel, META: None, TEXT: ""}
        if self.bcfg.audio.keep_audio:
            sample[AUDIO] = _flac_bytes(wave, self.fcfg.sample_rate_hz)
        if self.keep_wave:
            sample[WAVE] = wave
        return sample

    def _add_views(self, g: _Group, wave: np.ndarray) -> None:
        base = g.meta["id"]
        for i, (view, chain) in enumerate(self.audio_aug.views(wave, base)):
            key = f"{base}v{i + 1}"
            g.samples.append(self._sample(key, view))
            g.changes.append(
                {"id": key, "augment": chain, "audio_sha1": dedup.pcm_sha1(view), "audio_fp": ""}
            )

    def _text_pass(self, g: _Group) -> Reject | None:
        """Augmented texts for one kept segment, then the json of its samples, or the reject
        of a segment left without any text."""
        meta = g.meta
        if self.text_aug is not None:
            meta["texts"] = meta["texts"] + self.text_aug(dict(meta))
        if not meta["texts"] and self.bcfg.filters.require_text:
            return filters.at_source(filters.no_text_reject(g.ref), g.source)
        # Every sample the same keys and types (core.sample.META_SCHEMA), nulls filled.
        canon = canonical_meta(meta)
        text = canon["texts"][0]["text"] if canon["texts"] else ""
        for sample, changes in zip(g.samples, g.changes, strict=True):
            sample[META] = canonical_update(canon, changes) if changes else canon
            sample[TEXT] = text
        return None


@dataclass
class _Group:
    """A kept segment between the two passes of :meth:`SampleProcessor.process`: its json
    before text augmentation and its samples (the segment's, then its views'), each with the
    json fields in which it differs from the segment's."""

    ref: SampleRef
    source: str  # the reject source of this segment
    meta: SampleMeta
    samples: list[dict[str, Any]]
    changes: list[dict[str, Any]]


def _segment_source(ref: SampleRef, seg: Any, n_segments: int) -> str:
    """The reject ``source`` of one segment: the input's own when it has one segment."""
    src = ref_source(ref)
    return src if n_segments == 1 else f"{src}@{seg.start_s:.2f}-{seg.end_s:.2f}"


def _round(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 5) if np.isfinite(v) else None
    return v


def _jsonable(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool)) or v is None


def _flac_bytes(wave: np.ndarray, sr: int) -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()
