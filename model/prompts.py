"""Zero-shot prompts: label checks, templates per language, prompt ensembling.

Shared by the inference API (``model.api``) and the evaluation harness
(``dataprep.evaluation``): one default template set, one ensembling rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# CLIP-style prompt ensembling; "{}" is the label. The evaluation harness's zero-shot default.
DEFAULT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": ("the sound of {}", "a recording of {}", "{} can be heard", "{}"),
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
    """``{lang: templates}`` to ensemble: ``templates`` is None (the defaults), a mapping per
    language, or one list (any language); ``langs`` selects languages of a mapping."""
    if isinstance(templates, str):
        templates = [templates]
    if templates is None:
        temps = dict(DEFAULT_TEMPLATES)
    elif isinstance(templates, Mapping):
        temps = {k: tuple(v) for k, v in templates.items()}
    else:
        if langs is not None:
            raise ValueError("langs selects languages of a {lang: [templates]} mapping")
        temps = {"any": tuple(templates)}
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
