"""Text augmentation on the bundled corpora: templates (8+ languages), nlpaug, TextAugmenter.

Metadata comes from the real readers over ``corpora_root``; expectations come from the template
files and the readers' own fields, not from hard-coded captions.
"""

from __future__ import annotations

import re
import string
import unicodedata
from pathlib import Path

import pytest

from dataprep.augment import TextAugmenter
from dataprep.augment import templates as tpl
from dataprep.augment.text import NAMES, NlpaugAugmenter, WordNetTagger, plan, scripts_in
from dataprep.core.config import AugmentConfig, CorpusConfig
from dataprep.core.sample import SampleRef, sample_key
from dataprep.corpora import read_corpus

LANGS = ("en", "de", "fr", "es", "zh", "hi", "ar", "sw")
ESC50_CLASSES = tuple(
    """
    dog rooster pig cow frog cat hen insects sheep crow rain sea_waves crackling_fire
    crickets chirping_birds water_drops wind pouring_water toilet_flush thunderstorm
    crying_baby sneezing clapping breathing coughing footsteps laughing brushing_teeth
    snoring drinking_sipping door_wood_knock mouse_click keyboard_typing door_wood_creaks
    can_opening washing_machine vacuum_cleaner clock_alarm clock_tick glass_breaking
    helicopter chainsaw siren car_horn engine train church_bells airplane fireworks hand_saw
    """.split()  # noqa: SIM905 (a word list reads best as text)
)
US8K_CLASSES = tuple(
    """
    air_conditioner car_horn children_playing dog_bark drilling engine_idling gun_shot
    jackhammer siren street_music
    """.split()  # noqa: SIM905 (a word list reads best as text)
)
EMOTIONS = [
    "neutral",
    "calm",
    "happy",
    "sad",
    "angry",
    "fearful",
    "disgust",
    "surprised",
    "anger",
    "fear",
]


def _meta(ref: SampleRef) -> dict:
    """The sample json as the builder hands it to TextAugmenter (see dataprep/process.py)."""
    texts = []
    if ref.text:
        texts.append(
            {
                "text": ref.text,
                "lang": ref.lang,
                "kind": "original",
                "provenance": {"source": "corpus"},
            }
        )
    elif ref.labels:
        label = ", ".join(x.replace("_", " ") for x in ref.labels)
        texts.append(
            {"text": label, "lang": "en", "kind": "original", "provenance": {"source": "labels"}}
        )
    meta = {
        "id": sample_key(ref.corpus, ref.source_id, (0.0, 1.0)),
        "corpus": ref.corpus,
        "source_id": ref.source_id,
        "lang": ref.lang,
        "labels": list(ref.labels),
        "speaker": ref.speaker,
        "texts": texts,
    }
    if ref.extra:
        meta["attributes"] = {
            k: v for k, v in ref.extra_dict().items() if isinstance(v, (str, int, float))
        }
    return meta


def _refs(root: Path, name: str, reader: str, n: int | None = None) -> list[SampleRef]:
    cfg = CorpusConfig(name=name, reader=reader, root=str(root / name))
    refs = [r for r in read_corpus(cfg) if isinstance(r, SampleRef)]
    return refs[:n] if n else refs


@pytest.fixture(scope="module")
def metas(corpora_root: Path) -> dict[str, list[dict]]:
    return {
        "esc50": [_meta(r) for r in _refs(corpora_root, "esc50_mini", "esc50")],
        "cremad": [_meta(r) for r in _refs(corpora_root, "cremad_mini", "cremad")],
        "commonvoice": [_meta(r) for r in _refs(corpora_root, "commonvoice_mini", "commonvoice")],
        "kws": [_meta(r) for r in _refs(corpora_root, "kws_mini", "speechcommands")],
        "librispeech": [_meta(r) for r in _refs(corpora_root, "librispeech_mini", "librispeech")],
        "audiocaps": [_meta(r) for r in _refs(corpora_root, "audiocaps_mini", "audiocaps", 5)],
    }


# -- template data files -----------------------------------------------------------------------
def test_template_files_cover_languages_and_vocabularies() -> None:
    assert set(LANGS) <= set(tpl.available_languages())
    for lang in tpl.available_languages():
        ts = tpl.load_templates(lang)  # validates placeholders
        missing = [c for c in ESC50_CLASSES + US8K_CLASSES if c not in ts.labels]
        assert not missing, f"{lang}: labels without a phrase: {missing}"
        assert set(EMOTIONS) <= set(ts.emotions), lang
        assert set(LANGS) <= set(ts.languages), lang
        assert ts.sound and all(ts.speech[g] for g in tpl.GENDERS) and ts.keyword["unknown"]
        for t in ts.sound:
            assert tpl.fields_of(t) == {"label"}, (lang, t)


def test_unknown_language_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no caption templates for 'xx'"):
        tpl.load_templates("xx")


# -- templates on real metadata ----------------------------------------------------------------
def test_templates_per_corpus_kind(metas: dict[str, list[dict]]) -> None:
    cap = tpl.TemplateCaptioner(LANGS, seed=0)
    for m in metas["esc50"]:
        out = cap(m)
        assert {e["lang"] for e in out} == set(LANGS), m["labels"]
        en = next(e for e in out if e["lang"] == "en")
        assert tpl.load_templates("en").labels[m["labels"][0]] in en["text"]
        assert all(e["kind"] == "template" and e["provenance"]["template"] for e in out)
    # Emotion corpus: gender, emotion and transcript folded in when the template allows.
    folded = 0
    for m in metas["cremad"]:
        attrs = m["attributes"]
        for e in cap(m):
            ts = tpl.load_templates(e["lang"])
            assert attrs["transcript"] in e["text"], e
            gender = tpl.norm_gender(attrs.get("gender"))
            assert e["provenance"]["template"] in ts.speech[gender]
            emo = ts.emotions[m["labels"][0]]
            folded += emo in e["text"]
    assert folded > len(metas["cremad"]) * len(LANGS) / 2  # most captions say the emotion
    # Speech: the transcript is quoted verbatim, never translated.
    for m in metas["commonvoice"]:
        for e in cap(m):
            assert m["texts"][0]["text"] in e["text"]
    for m in metas["kws"]:
        out = cap(m)
        assert out and all(m["texts"][0]["text"] in e["text"] for e in out)
    # Captioned clips are already captions: nothing templated.
    assert all(cap(m) == [] for m in metas["audiocaps"])


def test_templates_deterministic_per_seed(metas: dict[str, list[dict]]) -> None:
    sample = metas["esc50"] + metas["cremad"] + metas["commonvoice"]
    a = [tpl.TemplateCaptioner(LANGS, seed=1)(m) for m in sample]
    b = [tpl.TemplateCaptioner(LANGS, seed=1)(m) for m in sample]
    c = [tpl.TemplateCaptioner(LANGS, seed=2)(m) for m in sample]
    assert a == b
    assert a != c  # another seed draws other templates somewhere


def test_untranslated_label_gives_no_caption_in_that_language() -> None:
    meta = {"id": "x", "labels": ["no_such_class"], "texts": []}
    out = tpl.TemplateCaptioner(LANGS, seed=0)(meta)
    assert out == []


# -- nlpaug ------------------------------------------------------------------------------------
def test_wordnet_installed_and_tagger_offline() -> None:
    from nltk.corpus import wordnet

    assert wordnet.synsets("dog"), "WordNet missing from <venv>/nltk_data (infra/install)"
    tagger = WordNetTagger()
    tags = dict(tagger(["the", "dog", "barks", "twice", "loud", "quickly", "3"]))
    assert tags["dog"] == "NN" and tags["quickly"] == "RB"
    assert tags["the"] == tags["twice"] == tags["3"] == "DT"  # never replaced


def test_every_augmenter_deterministic_and_seed_sensitive() -> None:
    text = "a big dog barks loudly while heavy rain falls on the old wooden roof"
    for name in NAMES:
        a = NlpaugAugmenter((name,), 0.3, seed=0)
        b = NlpaugAugmenter((name,), 0.3, seed=0)
        outs = [a.augment(text, "en", name, key=f"k{i}") for i in range(6)]
        assert outs == [b.augment(text, "en", name, key=f"k{i}") for i in range(6)], name
        assert any(o and o != text for o in outs), f"{name} never changed the text"
        other = [
            NlpaugAugmenter((name,), 0.3, seed=7).augment(text, "en", name, key=f"k{i}")
            for i in range(6)
        ]
        assert other != outs, name


def test_synonyms_keep_numbers_and_function_words() -> None:
    aug = NlpaugAugmenter(("synonym",), 0.9, seed=0)
    for i in range(10):
        out = aug.augment("two dogs bark twice at the red car", "en", "synonym", key=str(i))
        assert out is not None
        words = out.split()
        assert words[0] == "two" and "twice" in words and "the" in words


_LATIN = re.compile(r"[A-Za-z\u00C0-\u024F]")


def _non_latin_tokens(text: str) -> list[str]:
    return [t for t in text.split() if set(scripts_in(t)) - {"LATIN"}]


@pytest.mark.parametrize(
    "text,lang",
    [
        ("今天天气很好我们去公园散步吧", "zh"),
        ("आज मौसम बहुत अच्छा है और हम बाहर जाएंगे", "hi"),
        ("الطقس جميل اليوم وسنخرج إلى الحديقة", "ar"),
        ('a man says "今天天气很好，我们去公园散步吧。" in Chinese', "en"),
        ("une femme dit « आज मौसम बहुत अच्छा है » en hindi", "fr"),
    ],
)
def test_no_latin_noise_in_cjk_devanagari_arabic(text: str, lang: str) -> None:
    aug = NlpaugAugmenter(NAMES, 0.5, seed=0)
    letters_before = {ch for tok in _non_latin_tokens(text) for ch in tok}
    for name in NAMES:
        for i in range(5):
            out = aug.augment(text, lang, name, key=f"k{i}")
            if out is None:
                continue
            for tok in _non_latin_tokens(out):
                assert not _LATIN.search(tok), (name, out)
            if name not in ("random_char", "random_word_swap", "random_word_delete"):
                # Latin-only augmenters leave every non-Latin token exactly as it was.
                assert _non_latin_tokens(out) == _non_latin_tokens(text), (name, out)
            # Whatever moved, no character of another script was invented.
            new_chars = {ch for tok in _non_latin_tokens(out) for ch in tok} - letters_before
            assert not {c for c in new_chars if unicodedata.category(c).startswith("L")}, (
                name,
                out,
            )


def test_script_rules() -> None:
    assert plan("keyboard", "今天天气很好", "zh") is None
    assert plan("random_char", "आज मौसम बहुत अच्छा है", "hi") is None  # vowel signs stay attached
    assert plan("random_word_swap", "今天 天气 很好 我们", "zh") is None
    assert plan("synonym", "ein Hund bellt laut", "de") is None
    assert plan("keyboard", "привет как дела", "uk") == ("uk", "CYRILLIC")
    assert plan("keyboard", "привет как дела", "ru") is None  # no Russian layout in nlpaug
    assert plan("random_char", "привет как дела", "ru") == ("swap", "CYRILLIC")
    with pytest.raises(ValueError, match="unknown nlpaug augmenter"):
        plan("backtranslate", "x", "en")


# -- TextAugmenter, the builder's API ----------------------------------------------------------
def test_text_augmenter_end_to_end(metas: dict[str, list[dict]]) -> None:
    cfg = AugmentConfig(template_langs=LANGS, nlpaug=NAMES, nlpaug_per_sample=3, seed=3)
    aug = TextAugmenter(cfg)
    sample = metas["esc50"][:5] + metas["cremad"][:5] + metas["commonvoice"][:10] + metas["kws"][:5]
    first = [aug(m) for m in sample]
    again = [TextAugmenter(cfg)(m) for m in sample]
    assert first == again
    kinds = {e["kind"] for out in first for e in out}
    assert "template" in kinds and any(k.startswith("nlpaug:") for k in kinds)
    for m, out in zip(sample, first):
        existing = {t["text"] for t in m["texts"]}
        assert len({e["text"] for e in out}) == len(out) and not existing & {e["text"] for e in out}
        for e in out:
            assert set(e) == {"text", "lang", "kind", "provenance"} and e["text"].strip()
            assert all(ch in string.printable or ord(ch) > 127 for ch in e["text"])
        assert sum(e["kind"].startswith("nlpaug:") for e in out) <= 3
    assert aug.drain_rejects() == [] and aug.rejects == []
    aug.close()


def test_llm_off_by_default_and_missing_backend_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert not AugmentConfig().llm  # builder: ``if acfg.llm`` -> stage off
    cfg = AugmentConfig(llm={"server": "external"})  # no base_url: skipped with a reason
    with caplog.at_level("WARNING"):
        aug = TextAugmenter(cfg)
    assert aug.llm is None and "llm.base_url is not set" in caplog.text
