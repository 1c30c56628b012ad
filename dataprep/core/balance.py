"""Temperature sampling arithmetic shared by the loader's weighted epochs and the tokenizer's
language-balanced training sample (issue 17): ``p_g ∝ w_g * n_g^alpha`` and integer quotas."""

from __future__ import annotations


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
