"""Text normalization across scripts and offline language identification on real transcripts."""

from __future__ import annotations

import csv
import unicodedata
from pathlib import Path

import pytest

from dataprep.core.lang import same_language
from dataprep.text import detect_language, letter_ratio, lower, normalize_text


@pytest.fixture(scope="session")
def corpora(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("corpora_root")


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("  Hello\tworld\r\n again ", "Hello world again"),  # TAB/CR/LF become one space
        ("bell\x07 and\x00 nul", "bell and nul"),  # other controls vanish
        ("zero\u200bwidth\ufeff", "zerowidth"),
        ("RTL\u202eoverride\u202c end", "RTLoverride end"),
        ("\u201cquoted\u201d \u2018single\u2019", "\"quoted\" 'single'"),
        ("cafe\u0301", "caf\u00e9"),  # combining accent composed (NFC)
        ("caf\u00c3\u00a9", "caf\u00e9"),  # UTF-8 read as Latin-1 (mojibake) repaired
        ("a\u00a0b\u3000c", "a b c"),  # no-break and ideographic spaces
        (
            "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
            "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
        ),
        (
            "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
            "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
        ),
        (
            "\u4f60\u597d\uff0c\u4e16\u754c\u3002",
            "\u4f60\u597d\uff0c\u4e16\u754c\u3002",
        ),  # CJK punctuation kept
        ("\u30b3\u30fc\u30d2\u30fc", "\u30b3\u30fc\u30d2\u30fc"),
        (
            "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!",
            "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!",
        ),
        (
            "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
            "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
        ),  # Persian ZWNJ kept
        (
            "family \U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f44b\U0001f3fd",
            "family \U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f44b\U0001f3fd",
        ),
        ("", ""),
    ],
)
def test_normalize_text(raw: str, want: str) -> None:
    got = normalize_text(raw)
    assert got == want
    assert normalize_text(got) == got  # idempotent
    assert got == unicodedata.normalize("NFC", got)


def test_lowercase_is_language_aware() -> None:
    assert normalize_text("ISTANBUL İzmir", "tr", lowercase=True) == "ıstanbul izmir"
    assert normalize_text("ISTANBUL", "en", lowercase=True) == "istanbul"
    assert lower("ÄÖÜ", "de") == "äöü"


def test_real_transcripts_survive_normalization(corpora: Path) -> None:
    """Every Common Voice sentence keeps its letters: only spacing/quotes may change."""
    for tsv in sorted((corpora / "commonvoice_mini").glob("*/validated.tsv")):
        with open(tsv, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
                norm = normalize_text(row["sentence"])
                letters = [c for c in unicodedata.normalize("NFC", row["sentence"]) if c.isalpha()]
                assert [c for c in norm if c.isalpha()] == letters, (
                    tsv.parent.name,
                    row["sentence"],
                )


def test_language_id_on_common_voice(corpora: Path) -> None:
    """Detected language of real CV sentences agrees with the locale for most sentences."""
    total = agree = 0
    per_locale: dict[str, list[bool]] = {}
    for tsv in sorted((corpora / "commonvoice_mini").glob("*/validated.tsv")):
        locale = tsv.parent.name
        with open(tsv, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
                lang, conf = detect_language(normalize_text(row["sentence"]))
                ok = same_language(lang, locale) and lang is not None
                assert 0.0 <= conf <= 1.0
                per_locale.setdefault(locale, []).append(ok)
                total += 1
                agree += ok
    assert total >= 30 and agree / total >= 0.85, (agree, total)
    # Distinct scripts are never confused: Chinese/Japanese/Russian/Arabic all right.
    for loc in ("zh-CN", "ja", "ru", "ar"):
        if loc in per_locale:
            assert all(per_locale[loc]), loc


def test_language_id_edge_cases() -> None:
    assert detect_language("") == (None, 0.0)
    assert detect_language("1234 !!! ...") == (None, 0.0)
    assert detect_language("Der Kaffee ist noch heiß, sei bitte vorsichtig.")[0] == "de"
    lang, _ = detect_language("Il pleut depuis ce matin.", languages=("fr", "en"))
    assert lang == "fr"


def test_helpers() -> None:
    assert (
        same_language("zh-CN", "zh")
        and same_language("pt_BR", "pt")
        and not same_language("en", "de")
    )
    assert same_language(None, "en")
    assert letter_ratio("abc!!!") == 0.5 and letter_ratio("   ") == 0.0
