"""Text normalization and language identification for transcripts and captions.

:func:`normalize_text` makes text safe to store and tokenize without touching what it says:
mojibake repaired (ftfy), control characters removed (TAB/CR/LF become spaces), zero-width and
bidirectional-override characters dropped, curly quotes straightened, whitespace collapsed,
Unicode NFC. Scripts are kept as they are (CJK, Devanagari, Arabic, Cyrillic, emoji); the
joiners U+200C/U+200D stay because Persian, Indic scripts and emoji sequences need them.

:func:`detect_language` uses lingua's offline models in low-accuracy (trigram) mode: ~70 MB
and instant to load, where the full model set takes ~1 GB and 7 s per process — too much for
every Ray worker. It is only asked when a corpus gives no language, or to cross-check one.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Any

import ftfy

from dataprep.core.lang import base_lang

# Dropped outright: zero-width space/no-break, word joiner, BOM, soft hyphen, bidi marks,
# embeddings/overrides and isolates, Arabic letter mark, Mongolian vowel separator.
_DROP = dict.fromkeys(
    map(
        ord,
        "\u200b\u2060\ufeff\u00ad\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
        "\u2066\u2067\u2068\u2069\u061c\u180e",
    )
)
_KEEP_FORMAT = {"\u200c", "\u200d"}  # ZWNJ/ZWJ carry meaning (fa, hi, emoji ZWJ sequences)
_SPACE_RE = re.compile(r"\s+", re.UNICODE)
_QUOTES = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
        "\u2033": '"',
        "\u00b4": "'",
        "`": "'",
    }
)
# Languages whose orthography is caseless or where lowercasing changes meaning are left alone.
_TURKIC = {"tr", "az"}


def normalize_text(text: str, lang: str | None = None, lowercase: bool = False) -> str:
    """Clean ``text`` (see module docstring); ``lowercase`` is language-aware (Turkish I/ı)."""
    if not text:
        return ""
    # ftfy: mojibake and HTML entities; leave quotes and NFC to us so the rules live in one place.
    out = ftfy.fix_text(
        text,
        uncurl_quotes=False,
        normalization="NFC",
        fix_line_breaks=False,
        remove_control_chars=False,
        # Full-width punctuation is correct CJK typography (，。！), not something to fix.
        fix_character_width=False,
    )
    out = out.translate(_DROP)
    chars = []
    for ch in out:
        cat = unicodedata.category(ch)
        if cat == "Cc":
            # TAB, LF, CR, VT, FF and the like separate words; NUL, BEL... are noise.
            chars.append(" " if ch in "\t\n\r\x0b\x0c\x85" else "")
        elif cat == "Cf" and ch not in _KEEP_FORMAT:
            continue
        elif cat in ("Zs", "Zl", "Zp"):
            chars.append(" ")
        else:
            chars.append(ch)
    out = "".join(chars).translate(_QUOTES)
    out = _SPACE_RE.sub(" ", out).strip()
    out = unicodedata.normalize("NFC", out)
    if lowercase:
        out = lower(out, lang)
    return out


def lower(text: str, lang: str | None) -> str:
    if base_lang(lang) in _TURKIC:
        text = text.replace("I", "ı").replace("İ", "i")
    return text.lower()


def letter_ratio(text: str) -> float:
    """Share of non-space characters that are letters, marks or digits (0 for empty text)."""
    visible = [c for c in text if not c.isspace()]
    if not visible:
        return 0.0
    good = sum(1 for c in visible if unicodedata.category(c)[0] in "LMN")
    return good / len(visible)


@functools.lru_cache(maxsize=4)
def _detector(languages: tuple[str, ...] | None) -> Any:
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    if languages:
        langs = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in languages]
        builder = LanguageDetectorBuilder.from_languages(*langs)
    else:
        builder = LanguageDetectorBuilder.from_all_languages()
    return builder.with_low_accuracy_mode().build()


def detect_language(
    text: str, languages: tuple[str, ...] | None = None
) -> tuple[str | None, float]:
    """``(ISO 639-1 code, confidence in [0, 1])``; ``(None, 0.0)`` for text without letters.

    ``languages`` restricts the candidates (e.g. the languages a build expects).
    """
    if not text or not any(c.isalpha() for c in text):
        return None, 0.0
    values = _detector(
        tuple(sorted(languages)) if languages else None
    ).compute_language_confidence_values(text)
    if not values:
        return None, 0.0
    best = values[0]
    return best.language.iso_code_639_1.name.lower(), float(best.value)
