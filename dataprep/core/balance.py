"""Temperature sampling arithmetic shared by the loader's weighted epochs and the tokenizer's
language-balanced training sample (issue 17): ``p_g ∝ w_g * n_g^alpha`` and integer quotas."""

from __future__ import annotations

NO_LANG = "none"  # the language group of samples without a language (sound events, music)


def group_probs(
    counts: dict[str, int], alpha: float, weights: dict[str, float] | None = None
) -> dict[str, float]:
    """``p_g ∝ weights[g] * n_g^alpha``, normalized (weights default to 1). XLM-R / mT5
    temperature sampling: ``alpha = 1`` keeps the data's proportions, smaller flattens them."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if not counts or min(counts.values()) < 1:
        raise ValueError(f"every group needs at least one sample: {counts}")
    w = weights or {}
    raw = {g: w.get(g, 1.0) * float(n) ** alpha for g, n in sorted(counts.items())}
    total = sum(raw.values())
    return {g: v / total for g, v in raw.items()}


def quotas(probs: dict[str, float], n: int) -> dict[str, int]:
    """``round(n * p)`` per group by largest remainders (ties by name): they sum to ``n``."""
    exact = {g: n * p for g, p in probs.items()}
    out = {g: int(v) for g, v in exact.items()}
    rest = sorted(exact, key=lambda g: (-(exact[g] - out[g]), g))
    for g in rest[: n - sum(out.values())]:
        out[g] += 1
    return out


def group_of(by: str, corpus: str, lang: str) -> str:
    """The sampling group of a (corpus, language) under ``loader.sampling.by``."""
    return {"lang": lang, "corpus": corpus}.get(by, f"{corpus}/{lang}")


def stratum_shares(
    strata: dict[tuple[str, str], int], by: str, alpha: float,
    corpus_weights: dict[str, float], lang_weights: dict[str, float],
) -> dict[tuple[str, str], float]:  # fmt: skip
    """The expected share of training draws of each (corpus, lang) with ``n`` samples: its
    group ``g`` (:func:`group_of`) is drawn with ``p_g ∝ w_g * n_g^alpha``, ``w_g`` the
    sample-weighted mean of its corpus x language multipliers, and a group's draws are spread
    evenly over its samples. ``by: none``: the data's own proportions."""
    if by == "none":
        total = sum(strata.values())
        return {s: n / total for s, n in strata.items()}
    counts: dict[str, int] = {}
    mass: dict[str, float] = {}
    for (corpus, lang), n in strata.items():
        g = group_of(by, corpus, lang)
        counts[g] = counts.get(g, 0) + n
        w = corpus_weights.get(corpus, 1.0) * lang_weights.get(lang, 1.0)
        mass[g] = mass.get(g, 0.0) + w * n
    probs = group_probs(counts, alpha, {g: mass[g] / counts[g] for g in counts})
    return {
        (c, lang): probs[group_of(by, c, lang)] * n / counts[group_of(by, c, lang)]
        for (c, lang), n in strata.items()
    }
