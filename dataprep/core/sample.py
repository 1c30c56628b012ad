"""The sample contract, declared once.

A reader yields :class:`SampleRef` records (metadata only, audio never decoded). The shard
builder turns each into one or more samples (plain dicts keyed by WebDataset extension plus
``__key__``) or exactly one :class:`Reject` row. See ARCHITECTURE.md "The sample inside a shard".
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

# Members of one sample inside a tar shard.
MEL = "mel.npy"
META = "json"
TEXT = "txt"
AUDIO = "flac"
# The normalized waveform, held in memory by a sample only while the build scores it
# (dataprep/curation.py); never a member of a tar (tario refuses to encode it).
WAVE = "__wave__"
SAMPLE_MEMBERS = (MEL, META, TEXT)

# Text kinds stored in ``texts[*].kind``.
KIND_ORIGINAL = "original"
KIND_TEMPLATE = "template"
KIND_NLPAUG_PREFIX = "nlpaug:"
KIND_LLM_PREFIX = "llm:"

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SampleRef:
    """One input item as a reader found it. Small, frozen, picklable; never holds audio.

    ``source_id`` is stable across reruns (a path relative to the corpus root, or the corpus's
    own id). ``audio`` is an fsspec URI (a plain local path is fine). ``start_s``/``end_s``
    select a region of a longer recording (the corpus's own timestamps). ``split`` is the
    corpus's own split when it has one (None: decided by a hash of speaker/source).
    ``labels`` are class names (ESC-50 category, emotion, keyword...). ``extra`` carries
    reader-specific metadata as sorted ``(key, value)`` pairs so the record stays hashable.
    """

    corpus: str
    source_id: str
    audio: str
    text: str | None = None
    lang: str | None = None
    labels: tuple[str, ...] = ()
    speaker: str | None = None
    license: str | None = None
    split: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    duration_s: float | None = None  # declared by metadata or header; never trusted blindly
    captions: tuple[str, ...] = ()  # additional reference texts (multi-caption corpora)
    extra: tuple[tuple[str, Any], ...] = ()

    def extra_dict(self) -> dict[str, Any]:
        return dict(self.extra)


@dataclass(frozen=True)
class Reject:
    """Why one input did not become a sample (every input ends as samples or one Reject), or,
    with ``stage`` :data:`TEXT_REJECT_STAGE`, why one generated text of a kept sample was
    dropped (:func:`is_text_reject`; counted apart from rejected inputs)."""

    source: str  # "<corpus>:<source_id>" or a URI when no id exists yet
    stage: str  # reader | decode | normalize | filter | dedup | augment | features
    reason: str  # short machine-readable reason, e.g. "missing_file", "too_short"
    detail: str = ""  # one human sentence with the numbers
    corpus: str = ""
    flags: tuple[str, ...] = field(default=())

    def as_row(self) -> dict[str, str]:
        return {
            "source": self.source,
            "corpus": self.corpus,
            "stage": self.stage,
            "reason": self.reason,
            "detail": self.detail,
        }


# Rejects of this stage are generated texts (LLM, templates, nlpaug) that failed validation or
# whose augmenter failed: the sample was kept, so they are not rejected inputs.
TEXT_REJECT_STAGE = "augment"


def is_text_reject(r: Reject | Mapping[str, Any]) -> bool:
    """Whether a reject (or its ``rejects.parquet`` row) is a dropped generated text."""
    stage = r.stage if isinstance(r, Reject) else r.get("stage")
    return stage == TEXT_REJECT_STAGE


def reject_counts(rows: Iterable[Reject | Mapping[str, Any]]) -> dict[str, Any]:
    """Counts for a build summary: rejected inputs and rejected generated texts, apart (a build
    of 90 samples with 142 rejected LLM texts has not rejected 142 inputs)."""
    inputs: Counter[str] = Counter()
    texts: Counter[str] = Counter()
    for r in rows:
        reason = r.reason if isinstance(r, Reject) else str(r.get("reason"))
        (texts if is_text_reject(r) else inputs)[reason] += 1
    return {
        "rejects": sum(inputs.values()),
        "reject_reasons": dict(inputs),
        "text_rejects": sum(texts.values()),
        "text_reject_reasons": dict(texts),
    }


class TextEntry(TypedDict):
    text: str
    lang: str | None
    kind: str  # original | template | nlpaug:<name> | llm:<model>
    provenance: dict[str, Any]


class SampleMeta(TypedDict, total=False):
    """The ``json`` member of a sample."""

    id: str
    corpus: str
    source_id: str
    source_uri: str
    segment: list[float]  # [start_s, end_s] within the source recording
    lang: str | None
    duration: float
    sample_rate: int
    labels: list[str]
    speaker: str | None
    license: str | None
    split: str
    group: str  # samples sharing a group are never each other's negatives
    audio_sha1: str  # sha1 of the normalized float32 PCM bytes
    audio_fp: str  # audio fingerprint (near-duplicate detection), hex; "" for augmented views
    feature_fingerprint: str
    texts: list[TextEntry]
    flags: list[str]  # kept-but-flagged conditions, e.g. "clipping"
    stats: dict[str, float]  # loudness, dbfs, clip ratio... for the quality report
    augment: list[dict[str, Any]]  # audio transform chain for augmented views ([] otherwise)
    attributes: dict[str, Any]  # the reader's extra metadata (task, fold, ...), JSON scalars


def sample_key(corpus: str, source_id: str, segment: tuple[float, float] | None = None) -> str:
    """``<corpus>-<16 hex of sha1(corpus + source_id + segment)>``: stable across reruns."""
    seg = "" if segment is None else f"{segment[0]:.3f}-{segment[1]:.3f}"
    digest = hashlib.sha1(f"{corpus}\x00{source_id}\x00{seg}".encode()).hexdigest()[:16]
    return f"{corpus}-{digest}"


def ref_source(ref: SampleRef) -> str:
    return f"{ref.corpus}:{ref.source_id}"


# ----------------------------------------------------------------------- one JSON schema
# Every sample's ``json`` member has exactly these keys with these types, so independent readers
# (webdataset, wids, Ray Data, Hugging Face ``datasets``) infer one schema from any sample: no
# key is ever missing, no value is ever null. A missing string is "", a missing list is [].
# ``JSON`` marks a free-form object whose keys differ by corpus or stage (per-corpus attributes,
# a text's provenance, audio stats, an augmentation chain); readers keep it as one JSON value.
JSON = "json"
TEXT_SCHEMA: dict[str, Any] = {"text": str, "lang": str, "kind": str, "provenance": JSON}
# Tasks whose text *describes* the sound instead of transcribing it. Every other text (no task,
# asr, kws, emotion...) is transcript-like: its characters per second are bounded, its utterance
# is never cut into windows (dataprep.audio.load_segments), and the loader never pairs it with a
# crop of its audio (dataprep.loader.sample.prepare). A sample's task is ``attributes["task"]``.
CAPTION_TASKS = frozenset(
    {"caption", "audio_caption", "captioning", "description", "classification", "tagging",
     "sound_event"}
)  # fmt: skip


def is_transcript_task(task: Any) -> bool:
    """Whether a text of a corpus with this ``task`` stands for what is said in all its audio."""
    return task not in CAPTION_TASKS


META_SCHEMA: dict[str, Any] = {
    "id": str,
    "corpus": str,
    "source_id": str,
    "source_uri": str,  # relative to the corpus root (roots are recorded once, in build.json)
    "segment": [float],
    "lang": str,
    "duration": float,
    "sample_rate": int,
    "labels": [str],
    "speaker": str,
    "license": str,
    "split": str,
    "group": str,
    "audio_sha1": str,
    "audio_fp": str,
    "feature_fingerprint": str,
    "texts": [TEXT_SCHEMA],
    "flags": [str],
    "stats": JSON,
    "attributes": JSON,
    "augment": [JSON],
}


def _canon(kind: Any, value: Any) -> Any:
    if kind is JSON or kind == JSON:
        return value if isinstance(value, dict) else ({} if value is None else value)
    if isinstance(kind, list):
        return [_canon(kind[0], v) for v in (value or [])]
    if isinstance(kind, dict):
        value = value or {}
        return {k: _canon(t, value.get(k)) for k, t in kind.items()}
    if kind is str:
        return "" if value is None else str(value)
    if kind is float:
        return float(value) if value is not None else 0.0
    if kind is int:
        return int(value) if value is not None else 0
    raise TypeError(f"unknown schema type {kind!r}")


def canonical_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` with every key of :data:`META_SCHEMA`, typed: None -> "" / [] / {}.

    Keys outside the schema are refused (a new field is added to the schema first, so every
    sample gets it), which keeps "every sample has the same keys" true by construction.
    """
    extra = set(meta) - set(META_SCHEMA)
    if extra:
        raise ValueError(f"sample json keys outside META_SCHEMA: {sorted(extra)}")
    return {k: _canon(t, meta.get(k)) for k, t in META_SCHEMA.items()}


def canonical_update(canon: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`canonical_meta` of ``canon`` (already canonical) with ``changes``: only the
    changed fields are typed again; the others are shared with ``canon`` (an audio view's
    json is its clip's but for four fields; its texts are not canonicalized twice)."""
    extra = set(changes) - set(META_SCHEMA)
    if extra:
        raise ValueError(f"sample json keys outside META_SCHEMA: {sorted(extra)}")
    return {**canon, **{k: _canon(META_SCHEMA[k], v) for k, v in changes.items()}}


def _hf_feature(name: str | None, kind: Any) -> dict[str, Any]:
    out: dict[str, Any] = {} if name is None else {"name": name}
    if isinstance(kind, list):
        inner = _hf_feature(None, kind[0])
        # HF's YAML: "list: string" for scalars, "list: [fields]" for a list of structs
        out["list"] = inner["dtype"] if "dtype" in inner else inner["struct"]
    elif isinstance(kind, dict):
        out["struct"] = [_hf_feature(k, t) for k, t in kind.items()]
    else:
        out["dtype"] = {str: "string", float: "float64", int: "int64", JSON: "json"}[kind]
    return out


def hf_features(with_audio: bool = False) -> list[dict[str, Any]]:
    """The ``dataset_info.features`` of a shard set's dataset card (Hugging Face YAML form),
    from :data:`META_SCHEMA`: what ``datasets.load_dataset(<shard set dir>)`` reads with, so no
    type is guessed from the first samples (an empty ``labels`` list has no element type)."""
    feats = [
        {"name": "__key__", "dtype": "string"},
        _hf_feature(META, META_SCHEMA),
        {"name": MEL, "list": {"list": "float16"}},
        {"name": TEXT, "dtype": "string"},
    ]
    if with_audio:
        feats.append({"name": AUDIO, "dtype": "audio"})
    return feats
