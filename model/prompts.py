"""Zero-shot prompts: label checks, templates per language, prompt ensembling.

Shared by the inference API (``model.api``) and the evaluation harness
(``dataprep.evaluation``): one default template set per task kind and language, one ensembling
rule. The sound and keyword templates of every language of the bundled corpora follow the
wording of the training captions (``dataprep/augment/templates/<lang>.yaml``), so a zero-shot
prompt reads like the captions the model was trained on; the label goes in as given, so pass
labels in the templates' language (``zero_shot(audio, ["Hund", "Regen"], langs=["de"])``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

ANY_LANG = "any"  # the key of one template list given for any language (no language tag)
DEFAULT_LANGS = ("en",)  # zero-shot languages when none are asked for: labels are usually English

# CLIP-style prompt ensembling; "{}" is the label. Sound events: the zero-shot default.
DEFAULT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": ("the sound of {}", "a recording of {}", "{} can be heard", "{}"),
    "de": ("man hört {}", "eine Aufnahme, in der man {} hört", "{}"),
    "fr": ("on entend {}", "un enregistrement où l'on entend {}", "{}"),
    "es": ("se oye {}", "una grabación en la que se oye {}", "{}"),
    "it": ("si sente {}", "una registrazione in cui si sente {}", "{}"),
    "pt": ("ouve-se {}", "uma gravação em que se ouve {}", "{}"),
    "nl": ("je hoort {}", "een opname waarin je {} hoort", "{}"),
    "pl": ("słychać: {}", "nagranie, na którym słychać: {}", "{}"),
    "ru": ("слышно: {}", "запись, на которой слышно: {}", "{}"),
    "tr": ("{} duyuluyor", "{} duyulan bir kayıt", "{}"),
    "ar": ("صوت {}", "يمكن سماع {}", "{}"),
    "hi": ("आवाज़: {}", "इस रिकॉर्डिंग में सुनाई देता है: {}", "{}"),
    "zh": ("{}的声音", "可以听到{}", "{}"),
    "ja": ("{}が聞こえる", "{}が聞こえる録音", "{}"),
    "sw": ("sauti ya {}", "unaweza kusikia {}", "{}"),
}
# Keyword spotting: "{}" is the word as spoken, prompts in the word's language.
KEYWORD_TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": ("someone says {}", "the word {}", "{}"),
    "de": ("jemand sagt {}", "das Wort {}", "{}"),
    "fr": ("quelqu'un dit {}", "le mot {}", "{}"),
    "es": ("alguien dice {}", "la palabra {}", "{}"),
    "zh": ("有人说{}", "词语{}", "{}"),
    "hi": ("कोई {} कहता है", "शब्द {}", "{}"),
    "it": ("qualcuno dice la parola «{}»", "{}"),
    "pt": ("alguém diz a palavra «{}»", "{}"),
    "nl": ("iemand zegt het woord „{}”", "{}"),
    "pl": ("ktoś wypowiada słowo „{}”", "{}"),
    "ru": ("кто-то произносит слово «{}»", "{}"),
    "tr": ("biri “{}” kelimesini söylüyor", "{}"),
    "ar": ('شخص ينطق كلمة "{}"', "{}"),
    "ja": ("誰かが「{}」という単語を言う", "{}"),
    "sw": ('mtu anatamka neno "{}"', "{}"),
}
# Emotion: "{}" is the English adjective of the label (the harness's EMOTION_WORDS).
EMOTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": ("a person speaking in a {} voice", "someone sounds {}", "{} speech", "{}"),
}


def ensemble(embeddings: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Mean of consecutive groups of rows (``sizes``), renormalized: prompt ensembling."""
    out, i = [], 0
    for n in sizes:
        out.append(embeddings[i : i + n].mean(axis=0))
        i += n
    return normalize(np.stack(out))


def check_labels(labels: Sequence[str]) -> list[str]:
    """Refuse an empty label list, empty labels and duplicates (one clear line)."""
    if isinstance(labels, str):
        raise TypeError(f"labels must be a list of strings, not one string {labels!r}")
    labels = [str(x).strip() for x in labels]
    if len(labels) < 1:
        raise ValueError("no labels given")
    empty = [i for i, x in enumerate(labels) if not x]
    if empty:
        raise ValueError(f"empty label at position(s) {empty}")
    folded = [x.casefold() for x in labels]
    dups = sorted({x for x, f in zip(labels, folded) if folded.count(f) > 1})
    if dups:
        raise ValueError(f"duplicate labels (case-insensitive): {dups}")
    return labels


def resolve_templates(templates: Any, langs: Iterable[str] | None) -> dict[str, tuple[str, ...]]:
    """``{lang: templates}`` to ensemble: ``templates`` is None (:data:`DEFAULT_TEMPLATES` of
    ``langs``, default :data:`DEFAULT_LANGS`), a mapping per language, or one list (any
    language); ``langs`` selects languages of a mapping."""
    if isinstance(templates, str):
        templates = [templates]
    if templates is None:
        temps = dict(DEFAULT_TEMPLATES)
        langs = DEFAULT_LANGS if langs is None else langs
    elif isinstance(templates, Mapping):
        temps = {k: tuple(v) for k, v in templates.items()}
    else:
        if langs is not None:
            raise ValueError("langs selects languages of a {lang: [templates]} mapping")
        temps = {ANY_LANG: tuple(templates)}
    if langs is not None:
        missing = [lang for lang in langs if lang not in temps]
        if missing:
            raise ValueError(f"no templates for languages {missing}; have {sorted(temps)}")
        temps = {lang: temps[lang] for lang in langs}
    for lang, ts in temps.items():
        bad = [t for t in ts if t.count("{}") != 1]
        if not ts or bad:
            raise ValueError(
                f"templates ({lang}) must each contain exactly one '{{}}': {bad or ts}"
            )
    return temps


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows L2-normalized (float32)."""
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)
