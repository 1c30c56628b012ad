"""Offline nlpaug text augmentation: script-aware, seeded per (seed, sample key).

Augmenter names (``AugmentConfig.nlpaug``):

=====================  =====================================  ================================
name                   what it does                           applies to
=====================  =====================================  ================================
``keyboard``           neighbour-key typos                    scripts with an nlpaug layout for
                                                              the language (Latin: en layout
                                                              when the language has none;
                                                              Cyrillic uk, Hebrew, Thai)
``ocr``                OCR confusions (0/o, 1/l)              Latin
``random_char``        char substitute/insert/swap/delete     Latin, Cyrillic, Greek (all
                                                              actions); CJK, Arabic, Hebrew:
                                                              swap/delete only (no foreign
                                                              letters); not Indic scripts,
                                                              whose vowel signs must stay put
``random_word_swap``   swap adjacent words                    text with >= 3 space-separated
``random_word_delete`` delete words                           words (not zh/ja/th)
``split``              split a word in two                    Latin, Cyrillic, Greek
``spelling``           common English misspellings            English
``synonym``            WordNet synonym substitution           English
=====================  =====================================  ================================

No augmenter puts Latin characters into CJK, Devanagari or Arabic text.

``synonym`` uses WordNet copied from Debian into ``<venv>/nltk_data`` by
``infra/install/install_wordnet.py``; NLTK's averaged-perceptron tagger is not available
offline, so :class:`WordNetTagger` tags each word with the part of speech of its most common
WordNet synset (function words, numbers and count words are tagged so they are never replaced:
a synonym for "two" must not change how many dogs bark).

nlpaug draws from the global ``random`` and ``numpy.random`` generators. :func:`seeded` seeds
both from (seed, key, augmenter) under a lock and restores their previous state afterwards, so
outputs depend only on those inputs and callers' global RNG streams are left untouched.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import re
import threading
import unicodedata
from collections.abc import Iterator
from typing import Any

import numpy as np

from dataprep.core.hashing import stable_seed
from dataprep.core.lang import base_lang

log = logging.getLogger(__name__)

NAMES = (
    "keyboard",
    "ocr",
    "random_char",
    "random_word_swap",
    "random_word_delete",
    "split",
    "spelling",
    "synonym",
)
KEYBOARD_LAYOUTS = {"en", "de", "fr", "es", "it", "nl", "pl", "tr", "uk", "he", "th"}
_NO_SPACES = {"zh", "ja", "th", "lo", "km", "my"}
_INDIC = {"DEVANAGARI", "BENGALI", "GURMUKHI", "GUJARATI", "ORIYA", "TAMIL", "TELUGU",
          "KANNADA", "MALAYALAM", "SINHALA"}  # fmt: skip
_CJK = {"CJK", "HIRAGANA", "KATAKANA", "HANGUL"}
_LOCK = threading.RLock()


def script_of(text: str) -> str:
    """Dominant script of the letters in ``text``: LATIN, CYRILLIC, CJK, DEVANAGARI, ARABIC..."""
    counts = scripts_in(text)
    return max(counts, key=lambda k: counts[k]) if counts else "NONE"


def scripts_in(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ch in text:
        if not ch.isalpha():
            continue
        name = unicodedata.name(ch, "")
        head = name.split(" ")[0] if name else "UNKNOWN"
        if head in ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "IDEOGRAPHIC"):
            head = "CJK"
        counts[head] = counts.get(head, 0) + 1
    return counts


# Letters each character-level augmenter may touch; tokens with any other letter are protected
# through nlpaug's stopwords_regex, so a Chinese transcript quoted in a French template keeps
# its characters while the French words get typos.
_LETTERS = {
    "LATIN": "A-Za-z\u00c0-\u024f\u1e00-\u1eff",
    "CYRILLIC": "\u0400-\u04ff",
    "GREEK": "\u0370-\u03ff",
    "HEBREW": "\u0590-\u05ff",
    "THAI": "\u0e00-\u0e7f",
    "ARABIC": "\u0600-\u06ff\u0750-\u077f",
    "CJK": "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af",
}
_KEYBOARD_SCRIPT = {"uk": "CYRILLIC", "he": "HEBREW", "th": "THAI"}


def protect_regex(script: str) -> str:
    """Regex matching a token that holds a letter outside ``script`` (nlpaug skips those)."""
    return f".*[^\\W\\d_{_LETTERS[script]}].*"


@functools.lru_cache(maxsize=8192)  # captions, labels and fixed corpus sentences repeat
def plan(name: str, text: str, lang: str | None) -> tuple[str, str] | None:
    """``(variant, script)`` to apply augmenter ``name`` to ``text``, or None when unsafe.

    ``variant`` is the keyboard layout or the random_char action; ``script`` the letters the
    augmenter may touch (see the module table).
    """
    if name not in NAMES:
        raise ValueError(f"unknown nlpaug augmenter {name!r}; known: {list(NAMES)}")
    present = scripts_in(text)
    if not present:
        return None
    base = base_lang(lang) or ""
    main = max(present, key=lambda k: present[k])
    if name == "keyboard":
        if _KEYBOARD_SCRIPT.get(base) in present:
            return base, _KEYBOARD_SCRIPT[base]
        if "LATIN" in present:
            layout = base if base in KEYBOARD_LAYOUTS and base not in _KEYBOARD_SCRIPT else "en"
            return layout, "LATIN"
        return None
    if name in ("ocr", "split", "spelling", "synonym"):
        if "LATIN" not in present:
            return None
        if name in ("spelling", "synonym") and not (base == "en" and main == "LATIN"):
            return None
        return "", "LATIN"
    if name == "random_char":
        if main in _INDIC or main not in _LETTERS:
            return None
        # Outside pure Latin text only reorder/drop what is there: substitute/insert would
        # bring ASCII letters into other scripts.
        return ("substitute" if set(present) == {"LATIN"} else "swap"), main
    # word swap/delete move whole space-separated tokens: safe in any script with spaces
    if base in _NO_SPACES or main == "CJK" or len(text.split()) < 3:
        return None
    return "", main


def applies(name: str, text: str, lang: str | None) -> bool:
    """Whether augmenter ``name`` is safe for ``text`` (see the module table)."""
    return plan(name, text, lang) is not None


def _seed_int(*parts: Any) -> int:
    return stable_seed(*parts)


_DEPTH = [0]  # seeded() contexts open in this process (under _LOCK)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Seed the global ``random``/``numpy.random`` streams, restore them afterwards.

    Nested in another ``seeded`` (``None``: only hold the outer states), it just reseeds: the
    outermost context saves and restores the caller's streams once. Saving and restoring
    them (the Mersenne states, ~2.5 KB each) cost more than a short nlpaug call, and a
    sample's text variants run a dozen of them inside one ``seeded(None)``.
    """
    with _LOCK:
        outer = _DEPTH[0] == 0
        if outer:
            py_state = random.getstate()
            np_state = np.random.get_state()
        _DEPTH[0] += 1
        try:
            if seed is not None:
                random.seed(seed)
                np.random.seed(seed)
            yield
        finally:
            _DEPTH[0] -= 1
            if outer:
                random.setstate(py_state)
                np.random.set_state(np_state)


# -- WordNet tagger for SynonymAug -------------------------------------------------------------
_FUNCTION_WORDS = frozenset(
    """
    a an the this that these those some any each every no all both either neither i you he
    she it we they me him her us them my your his its our their mine yours and or but nor so
    yet for if then than as because while although though of in on at by to from with
    without into onto over under above below up down out off about after before behind
    between through during near across along around against is am are was were be been being
    do does did have has had will would shall should can could may might must not very too
    also just only there here what which who whom whose where when why how says said
    """.split()  # noqa: SIM905 (a word list reads best as text)
)
_NUMBER_WORDS = frozenset(
    """
    zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
    fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy
    eighty ninety hundred thousand million billion once twice thrice first second third
    fourth fifth single double triple couple pair dozen several many few half quarter
    """.split()  # noqa: SIM905 (a word list reads best as text)
)
_WN_TO_PTB = {"n": "NN", "v": "VB", "a": "JJ", "s": "JJ", "r": "RB"}
_KEEP = "DT"  # nlpaug's SynonymAug never replaces a token tagged DT


@functools.lru_cache(maxsize=1)
def _wordnet() -> Any:
    """NLTK's WordNet, loaded now rather than at the first lookup, then frozen out of the
    garbage collector's sight: it is ~400k Python objects that live as long as the process,
    and every full collection walked them all (~0.5 s each on this machine, several per shard
    task). ``gc.freeze`` moves what is alive now to a permanent generation; it is collected
    never, which is what a loaded dictionary needs."""
    import gc

    from nltk.corpus import wordnet

    wordnet.ensure_loaded()
    gc.freeze()
    return wordnet


class WordNetTagger:
    """Penn-style tags from the most common WordNet synset's part of speech (see docstring)."""

    def __init__(self) -> None:
        self.wn = _wordnet()
        self._memo: dict[str, str] = {}  # captions repeat words; synset lookups are the cost

    def tag(self, word: str) -> str:
        w = word.lower()
        hit = self._memo.get(w)
        if hit is None:
            hit = self._memo[w] = self._tag(w)
        return hit

    def _tag(self, w: str) -> str:
        if not w.isalpha() or w in _FUNCTION_WORDS or w in _NUMBER_WORDS:
            return _KEEP
        synsets = self.wn.synsets(w)
        if not synsets:
            return _KEEP
        return _WN_TO_PTB.get(synsets[0].pos(), _KEEP)

    def __call__(self, tokens: list[str]) -> list[tuple[str, str]]:
        return [(t, self.tag(t)) for t in tokens]


def _split(text: str) -> list[str]:
    return text.split()


def _join(tokens: list[str]) -> str:
    return " ".join(tokens)


class _MostCommonSense:
    """Synonyms from the most common synset of the word for that part of speech only.

    nlpaug pools the lemmas of every sense ("dog" -> "firedog", an andiron); the first synset
    keeps the caption's meaning.
    """

    def __init__(self, wordnet: Any) -> None:
        self.wn = wordnet

    def __call__(self, word: str, pos: str | None = None) -> list[str]:
        synsets = self.wn.synsets(word, pos=pos)
        return [lemma.name() for lemma in synsets[0].lemmas()] if synsets else []


@functools.lru_cache(maxsize=64)
def _build(name: str, variant: str, script: str, p: float) -> Any:
    """One nlpaug augmenter, built once per process and shared by the processors of its shard
    tasks (a keyboard layout's model file, the WordNet tagger's memo); its calls run under
    :func:`seeded`'s lock and keep no state between them."""
    import nlpaug.augmenter.char as nac
    import nlpaug.augmenter.word as naw

    # Whitespace tokens: nlpaug's default regex tokenizer splits Devanagari vowel signs off
    # their consonants and pads punctuation with spaces.
    if name == "random_word_swap":
        return naw.RandomWordAug(action="swap", aug_p=p, tokenizer=_split, reverse_tokenizer=_join)
    if name == "random_word_delete":
        return naw.RandomWordAug(
            action="delete", aug_p=p, tokenizer=_split, reverse_tokenizer=_join
        )
    io_ = {
        "tokenizer": _split,
        "reverse_tokenizer": _join,
        "stopwords_regex": protect_regex(script),
    }
    common = {"aug_char_p": p, "aug_word_p": p, **io_}
    if name == "keyboard":
        return nac.KeyboardAug(
            lang=variant, include_numeric=False, include_special_char=False, min_char=3, **common
        )
    if name == "ocr":
        return nac.OcrAug(**common)
    if name == "random_char":
        return nac.RandomCharAug(
            action=variant, include_numeric=False, spec_char="", min_char=2, **common
        )
    if name == "split":
        return naw.SplitAug(aug_p=p, **io_)
    if name == "spelling":
        import os

        import nlpaug

        path = os.path.join(os.path.dirname(nlpaug.__file__), "res/word/spelling/spelling_en.txt")
        return naw.SpellingAug(dict_path=path, aug_p=p, **io_)
    if name == "synonym":
        aug = naw.SynonymAug(aug_src="wordnet", aug_p=p, **io_)
        # nlpaug's WordNet model calls nltk.pos_tag (no tagger model offline): ours instead.
        aug.model.pos_tag = WordNetTagger()
        aug.model.predict = _MostCommonSense(aug.model.model)
        return aug
    raise ValueError(f"unknown nlpaug augmenter {name!r}; known: {list(NAMES)}")


class NlpaugAugmenter:
    """Applies the configured nlpaug augmenters; builds each one lazily, once per process."""

    def __init__(self, names: tuple[str, ...], p: float, seed: int) -> None:
        unknown = [n for n in names if n not in NAMES]
        if unknown:
            raise ValueError(f"unknown nlpaug augmenters {unknown}; known: {list(NAMES)}")
        self.names = tuple(names)
        self.p = p
        self.seed = seed

    def augment(
        self, text: str, lang: str | None, name: str, key: str, index: int = 0
    ) -> str | None:
        """Augmented ``text`` or None when ``name`` does not apply or changes nothing."""
        how = plan(name, text, lang) if text else None
        if how is None:
            return None
        aug = _build(name, *how, self.p)
        with seeded(_seed_int(self.seed, key, name, index, text)):
            out = aug.augment(text)
        if isinstance(out, list):
            out = out[0] if out else None
        out = re.sub(r"\s+", " ", out or "").strip()
        return out if out and out != text else None

    def variants(self, texts: list[dict[str, Any]], key: str, count: int) -> list[dict[str, Any]]:
        """Up to ``count`` (0: one per augmenter) new entries from the given text entries."""
        if not texts or not self.names:
            return []
        with seeded(None):  # one save/restore of the global streams for all the calls below
            return self._variants(texts, key, count or len(self.names))

    def _variants(self, texts: list[dict[str, Any]], key: str, n: int) -> list[dict[str, Any]]:
        rng = random.Random(_seed_int(self.seed, key, "nlpaug-plan"))
        seen = {t["text"] for t in texts}
        out: list[dict[str, Any]] = []
        order = list(self.names)
        rng.shuffle(order)
        for i in range(n * 2):  # some draws do not apply: try a few more, bounded
            if len(out) >= n:
                break
            src = texts[0] if i < len(order) else rng.choice(texts)
            name = order[i % len(order)]
            new = self.augment(src["text"], src.get("lang"), name, key, i)
            if new is None or new in seen:
                continue
            seen.add(new)
            out.append(
                {
                    "text": new,
                    "lang": src.get("lang"),
                    "kind": f"nlpaug:{name}",
                    "provenance": {"augmenter": name, "p": self.p, "source_kind": src.get("kind")},
                }
            )
        return out
