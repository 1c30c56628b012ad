"""The language balance of tokenizer training (issue 17): which characters the vocabulary can
afford as pieces, per language, and the language-balanced training sample (the loader's
temperature sampling, ``dataprep.core.balance``). Used by ``model.tokenizer.train_tokenizer``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from dataprep.core.balance import group_probs, quotas

META_PIECES = 4 + 256  # pad/unk/bos/eos + the byte-fallback pieces


def kept_chars(lines: Sequence[str], langs: Sequence[str], vocab_size: int) -> set[str] | None:
    """The characters the vocabulary can afford as pieces, or None when all fit.

    Sentencepiece needs a piece for every character of its coverage (>= 0.98) plus the meta
    pieces. Multilingual captions on a small vocabulary exceed that (CJK, Devanagari, Arabic...).
    With byte fallback the rare characters are still encoded, as bytes, so only some characters
    (at most half of the non-meta vocabulary) are kept in the training text: first each
    language's most frequent few (a quarter of the budget shared out, so no language's script is
    left to bytes alone; issue 17), then the most frequent of the (balanced) text overall.
    """
    room = vocab_size - META_PIECES
    if room < 8:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: byte fallback alone takes {META_PIECES} pieces"
        )
    chars: Counter[str] = Counter()
    per_lang: dict[str, Counter[str]] = {}
    for line, lang in zip(lines, langs):
        chars.update(line)
        per_lang.setdefault(lang, Counter()).update(line)
    budget = room // 2
    if len(chars) <= budget:
        return None
    floor = max(1, budget // (4 * len(per_lang)))
    kept = {c for lang in sorted(per_lang) for c, _ in per_lang[lang].most_common(floor + 1)}
    for c, _ in chars.most_common():
        if len(kept) >= budget:
            break
        kept.add(c)
    return kept


def balanced_sample(
    texts: Sequence[str], langs: Sequence[str], alpha: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """``texts`` resampled to as many texts, language ``l`` getting a share ``∝ n_l^alpha`` (the
    loader's temperature sampling): rare languages repeat, frequent ones are subsampled;
    deterministic for a seed. Returns (texts, their languages)."""
    import numpy as np

    by_lang: dict[str, list[str]] = {}
    for t, lang in zip(texts, langs):
        by_lang.setdefault(lang, []).append(t)
    want = quotas(group_probs({g: len(v) for g, v in by_lang.items()}, alpha), len(texts))
    out_t: list[str] = []
    out_l: list[str] = []
    for g, n in want.items():
        pool = by_lang[g]
        rng = np.random.default_rng([seed, len(pool)])
        order: list[int] = []
        while len(order) < n:
            order += [int(i) for i in rng.permutation(len(pool))[: n - len(order)]]
        out_t += [pool[i] for i in order]
        out_l += [g] * len(order)
    return out_t, out_l
