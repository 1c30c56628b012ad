"""Multilingual caption templates: labels, emotions, keywords and transcripts become captions.

The templates and their vocabularies are data (``templates/<lang>.yaml``, one file per
language), CLARA/LAION style: ``the sound of a dog barking``, ``a woman says "..." in a happy
voice``. Each file has

- ``sound``: templates with ``{label}`` (a phrase from ``labels``; several labels are joined
  with ``and``),
- ``speech`` / ``keyword``: templates keyed by speaker gender (``female``, ``male``,
  ``unknown``) so verbs and nouns agree, using ``{transcript}``, ``{emotion}``, ``{language}``,
- ``emotions``, ``languages``, ``labels``: the vocabulary in that language.

A sample gets at most one caption per language in ``AugmentConfig.template_langs``. The template
is drawn deterministically from (seed, sample id, language); templates that use every attribute
we know (gender, emotion, language) are preferred, so known attributes are folded in. A language
whose file lacks a label's translation gives no caption rather than a half-translated one.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dataprep.core.hashing import stable_int
from dataprep.core.lang import base_lang

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
GENDERS = ("female", "male", "unknown")
_FEMALE = {"female", "female_feminine", "f", "woman", "w", "feminine"}
_MALE = {"male", "male_masculine", "m", "man", "masculine"}
# Probability of taking a template that uses every known attribute (else any usable one):
# always folding everything in would make captions of one corpus too uniform.
P_FULL = 0.75


@dataclass(frozen=True)
class TemplateSet:
    lang: str
    conj: str
    sound: tuple[str, ...]
    speech: dict[str, tuple[str, ...]]
    keyword: dict[str, tuple[str, ...]]
    emotions: dict[str, str]
    languages: dict[str, str]
    labels: dict[str, str]


def available_languages() -> list[str]:
    # Language files are named by their code; other YAML here (llm_prompts.yaml) is not one.
    return sorted(
        p.stem for p in TEMPLATE_DIR.glob("*.yaml") if re.fullmatch(r"[a-z]{2,3}", p.stem)
    )


@functools.cache
def load_templates(lang: str) -> TemplateSet:
    """The template set of ``lang``; ``ValueError`` naming the available ones if missing."""
    path = TEMPLATE_DIR / f"{lang}.yaml"
    if lang not in available_languages():
        raise ValueError(f"no caption templates for {lang!r}; available: {available_languages()}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))

    def by_gender(section: str) -> dict[str, tuple[str, ...]]:
        raw = data.get(section) or {}
        return {g: tuple(raw.get(g) or ()) for g in GENDERS}

    ts = TemplateSet(
        lang=data.get("lang", lang),
        conj=data.get("and", " and "),
        sound=tuple(data.get("sound") or ()),
        speech=by_gender("speech"),
        keyword=by_gender("keyword"),
        emotions={str(k): str(v) for k, v in (data.get("emotions") or {}).items()},
        languages={str(k): str(v) for k, v in (data.get("languages") or {}).items()},
        labels={str(k): str(v) for k, v in (data.get("labels") or {}).items()},
    )
    for group in (ts.sound, *ts.speech.values(), *ts.keyword.values()):
        for tpl in group:
            unknown = fields_of(tpl) - {"label", "transcript", "emotion", "language"}
            if unknown:
                raise ValueError(f"{path}: template {tpl!r} uses unknown fields {sorted(unknown)}")
    return ts


@functools.lru_cache(maxsize=4096)
def fields_of(template: str) -> frozenset[str]:
    return frozenset(name for _, name, _, _ in string.Formatter().parse(template) if name)


def norm_gender(value: Any) -> str:
    v = str(value or "").strip().lower()
    if v in _FEMALE:
        return "female"
    if v in _MALE:
        return "male"
    return "unknown"


def norm_label(label: str) -> str:
    return label.strip().lower().replace(" ", "_").replace("-", "_")


def rng_for(seed: int, *parts: str) -> random.Random:
    """A private RNG from (seed, parts): same inputs, same draws, in any process."""
    return random.Random(stable_int(seed, *parts, algo="sha256"))


@dataclass(frozen=True)
class Facts:
    """What a sample tells us that a caption can say."""

    kind: str  # "sound" | "speech" | "keyword" | "" (nothing to template)
    labels: tuple[str, ...] = ()
    transcript: str | None = None
    emotion: str | None = None
    gender: str = "unknown"
    spoken_lang: str | None = None


def facts_of(meta: dict[str, Any], emotion_vocab: set[str]) -> Facts:
    attrs = meta.get("attributes") or {}
    task = str(attrs.get("task") or "").lower()
    labels = tuple(norm_label(x) for x in meta.get("labels") or () if x)
    gender = norm_gender(attrs.get("gender"))
    emotion = attrs.get("emotion")
    if emotion is None and labels and all(x in emotion_vocab for x in labels):
        emotion = labels[0]
    emotion = norm_label(emotion) if emotion else None
    transcript = attrs.get("transcript")
    if not transcript and task in ("asr", "kws", "emotion", ""):
        for t in meta.get("texts") or ():
            prov = t.get("provenance") or {}
            if t.get("kind") == "original" and prov.get("source") == "corpus":
                transcript = t.get("text")
                break
    transcript = str(transcript).strip() if transcript else None
    spoken = base_lang(meta.get("lang"))
    if task in ("caption", "noise"):
        return Facts("")  # already a caption / nothing spoken or labeled
    if task == "kws":
        return Facts(
            "keyword", labels, transcript or (labels[0] if labels else None), None, gender, spoken
        )
    if task in ("asr", "emotion") or emotion:
        return Facts("speech", labels, transcript, emotion, gender, spoken)
    if labels:
        return Facts("sound", labels)
    return Facts("")


def render(ts: TemplateSet, facts: Facts, rng: random.Random) -> tuple[str, str] | None:
    """One caption in ``ts.lang``: ``(text, template)``, or None when nothing fits."""
    values: dict[str, str] = {}
    if facts.kind == "sound":
        phrases = [ts.labels.get(x) for x in facts.labels]
        if not phrases or any(p is None for p in phrases):
            return None  # an untranslated label: no caption in this language
        values["label"] = ts.conj.join(p for p in phrases if p)
        pool = ts.sound
    elif facts.kind in ("speech", "keyword"):
        if facts.transcript:
            values["transcript"] = facts.transcript
        if facts.emotion and facts.emotion in ts.emotions:
            values["emotion"] = ts.emotions[facts.emotion]
        if facts.spoken_lang and facts.spoken_lang in ts.languages:
            values["language"] = ts.languages[facts.spoken_lang]
        pool = (ts.speech if facts.kind == "speech" else ts.keyword)[facts.gender]
        if facts.kind == "keyword" and not pool:
            pool = ts.keyword["unknown"]
    else:
        return None
    usable, full = _candidates(pool, frozenset(values))
    if not usable:
        return None
    tpl = rng.choice(full if rng.random() < P_FULL else usable)
    return tpl.format(**values), tpl


@functools.lru_cache(maxsize=4096)
def _candidates(
    pool: tuple[str, ...], known: frozenset[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The templates of ``pool`` that ``known`` fields fill (all, and those using the most)."""
    usable = [t for t in pool if fields_of(t) <= known and fields_of(t)]
    if not usable:
        return (), ()
    # "transcript" must be said when known: a caption of speech that drops the words is weaker.
    if "transcript" in known:
        with_words = [t for t in usable if "transcript" in fields_of(t)]
        usable = with_words or usable
    most = max(len(fields_of(t)) for t in usable)
    return tuple(usable), tuple(t for t in usable if len(fields_of(t)) == most)


class TemplateCaptioner:
    """Captions for one sample in every configured language (see module docstring)."""

    def __init__(self, langs: tuple[str, ...], seed: int) -> None:
        self.seed = seed
        self.sets = [load_templates(lang) for lang in langs]
        self.emotion_vocab = set().union(*(ts.emotions for ts in self.sets)) if self.sets else set()

    def __call__(self, meta: dict[str, Any]) -> list[dict[str, Any]]:
        facts = facts_of(meta, self.emotion_vocab)
        if not facts.kind:
            return []
        out = []
        for ts in self.sets:
            rng = rng_for(self.seed, "template", str(meta.get("id", "")), ts.lang)
            got = render(ts, facts, rng)
            if got is None:
                continue
            text, tpl = got
            out.append(
                {
                    "text": text,
                    "lang": ts.lang,
                    "kind": "template",
                    "provenance": {"template": tpl, "template_lang": ts.lang, "facts": facts.kind},
                }
            )
        return out
