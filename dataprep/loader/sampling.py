"""Weighted epochs: language/corpus temperature sampling over a shard split (issue 17).

A :class:`DrawPlan` groups the split's samples (``index.parquet``: key, shard, corpus, lang) by
``lang``, ``corpus`` or ``corpus/lang`` and gives group ``g`` of ``n_g`` samples the probability
``p_g ∝ w_g * n_g^alpha`` (XLM-R / mT5 temperature sampling; ``w_g`` the product of the
configured corpus and language multipliers, open_clip's upsampling factors). Samples without a
language form the group :data:`NO_LANG`.

An epoch is ``epoch_samples`` draws, a pure function of ``(seed, epoch)``: group ``g`` gets
``round(N * p_g)`` draws (largest remainders, so they sum to ``N``), taken from concatenated
permutations of its samples (no sample repeats before the group is used up). The draws are
ordered by the epoch's shard permutation (the unweighted loader's), then by key, and split
rank by rank and worker by worker into contiguous slices, so a draw is read by exactly one
worker of one rank. The ``r``-th repeat of a sample in an epoch gets its own crop and caption.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from dataprep.core import parquet
from dataprep.core.balance import NO_LANG, group_of, quotas, stratum_shares
from dataprep.core.config import ConfigError, SamplingConfig
from dataprep.core.hashing import stable_hash
from dataprep.core.shards import INDEX
from dataprep.loader.shardset import ShardSet, even_slice

log = logging.getLogger("dataprep.loader")

# (shard name, lo, hi, {key: repeat indices}): a weighted worker reads ``[lo, hi)`` of the tar
# and keeps the picked keys, each once per repeat
Segment = tuple[str, int, int, dict[str, tuple[int, ...]]]


@dataclass(frozen=True)
class DrawPlan:
    by: str
    groups: dict[str, tuple[tuple[str, str], ...]]  # group -> its (shard, key), sorted
    probs: dict[str, float]  # group -> p_g (sums to 1)
    strata: dict[str, Counter[tuple[str, str]]]  # group -> its samples per (corpus, lang)
    epoch_samples: int
    seed: int

    def expected_shares(self) -> dict[str, float]:
        """The expected share of the draws per ``corpus/<name>`` and ``lang/<code>``."""
        out: Counter[str] = Counter()
        for g, members in self.groups.items():
            n = len(members)
            for (corpus, lang), k in self.strata[g].items():
                out[f"corpus/{corpus}"] += self.probs[g] * k / n
                out[f"lang/{lang}"] += self.probs[g] * k / n
        return dict(sorted(out.items()))


def _check_names(cfg: SamplingConfig, corpora: set[str], langs: set[str], where: str) -> None:
    problems = [
        f"loader.sampling.{field} names {kind} {name!r}, which {where} does not contain "
        f"(it holds {sorted(have)})"
        for field, kind, names, have in (
            ("corpus_weights", "corpus", cfg.corpus_weights, corpora),
            ("lang_weights", "language", cfg.lang_weights, langs),
        )
        for name in sorted(names)
        if name not in have
    ]
    if problems:
        raise ConfigError("; ".join(problems))


def open_plan(shard_set: ShardSet, cfg: SamplingConfig, seed: int) -> DrawPlan:
    """The draw plan of a split; :class:`ConfigError` for a weight naming a corpus or language
    the split does not hold, a warning for a language with a weight but too few samples."""
    path = shard_set.split_dir / INDEX
    if not path.is_file():
        raise ConfigError(f"loader.sampling.by={cfg.by} needs {path} (written by the build)")
    table = parquet.read_table(path, columns=["key", "shard", "corpus", "lang"]).to_pydict()
    known = dict(shard_set.shards)
    rows = [
        (s, k, str(c or ""), str(lang or NO_LANG))
        for k, s, c, lang in zip(table["key"], table["shard"], table["corpus"], table["lang"])
        if s in known and k not in shard_set.exclude
    ]
    if not rows:
        raise ConfigError(f"{path} lists no sample of the shards in shards.json")
    _check_names(cfg, {r[2] for r in rows}, {r[3] for r in rows}, str(shard_set.split_dir))
    groups: dict[str, list[tuple[str, str]]] = {}
    strata: dict[str, Counter[tuple[str, str]]] = {}
    for shard, key, corpus, lang in sorted(rows):
        g = group_of(cfg.by, corpus, lang)
        groups.setdefault(g, []).append((shard, key))
        strata.setdefault(g, Counter())[corpus, lang] += 1
    counts = {g: len(m) for g, m in groups.items()}
    by_stratum = stratum_shares(
        {s: n for c in strata.values() for s, n in c.items()}, cfg.by, cfg.alpha,
        cfg.corpus_weights, cfg.lang_weights,
    )  # fmt: skip
    probs = {g: sum(by_stratum[s] for s in strata[g]) for g in sorted(groups)}
    n_epoch = cfg.epoch_samples or shard_set.num_samples
    rare = [g for g, p in probs.items() if p * n_epoch < 1.0]
    if rare:
        log.warning("loader.sampling: group(s) %s expect < 1 draw per epoch of %d", rare, n_epoch)
    plan = DrawPlan(cfg.by, {g: tuple(m) for g, m in groups.items()}, probs, strata, n_epoch, seed)
    log.info(
        "loader.sampling by=%s alpha=%s: %s", cfg.by, cfg.alpha,
        ", ".join(f"{g}: n={counts[g]} p={probs[g]:.3f}" for g in probs),
    )  # fmt: skip
    return plan


def epoch_draws(
    plan: DrawPlan, shards: tuple[tuple[str, int], ...], epoch: int
) -> list[tuple[str, str, int]]:
    """All ranks' draws of one epoch as ``(shard, key, repeat)``, in reading order."""
    draws: list[tuple[str, str, int]] = []
    for g, quota in quotas(plan.probs, plan.epoch_samples).items():
        members = plan.groups[g]
        rng = np.random.default_rng([plan.seed, epoch, stable_hash(g) & 0xFFFFFFFF])
        seen: Counter[int] = Counter()
        order: list[int] = []
        while len(order) < quota:
            order.extend(int(i) for i in rng.permutation(len(members))[: quota - len(order)])
        for i in order:
            shard, key = members[i]
            draws.append((shard, key, seen[i]))
            seen[i] += 1
    rank_of = np.random.default_rng([plan.seed, epoch]).permutation(len(shards))
    pos = {name: int(rank_of[i]) for i, (name, _) in enumerate(shards)}
    draws.sort(key=lambda d: (pos[d[0]], d[1], d[2]))
    return draws


def weighted_segments(
    plan: DrawPlan, shards: tuple[tuple[str, int], ...], *, epoch: int, rank: int,
    world_size: int, worker: int, num_workers: int,
) -> list[Segment]:  # fmt: skip
    """The segments one worker of one rank reads in a weighted epoch (module docstring)."""
    draws = epoch_draws(plan, shards, epoch)
    r_lo, r_hi = even_slice(len(draws), world_size, rank)
    w_lo, w_hi = even_slice(r_hi - r_lo, num_workers, worker)
    size = dict(shards)
    out: list[Segment] = []
    picks: dict[str, list[int]] = {}
    for shard, key, repeat in draws[r_lo + w_lo : r_lo + w_hi]:
        if not out or out[-1][0] != shard:
            picks = {}
            out.append((shard, 0, size[shard], picks))  # type: ignore[arg-type]
        picks.setdefault(key, []).append(repeat)
    return [(s, lo, hi, {k: tuple(v) for k, v in p.items()}) for s, lo, hi, p in out]


def shares(counts: Counter[str]) -> dict[str, Any]:
    """``{draws_corpus_<c>: share, draws_lang_<l>: share}`` of counted ``corpus/``/``lang/``
    draws (the metric names the trainer logs)."""
    out: dict[str, Any] = {}
    for kind in ("corpus", "lang"):
        n = sum(v for k, v in counts.items() if k.startswith(kind + "/"))
        for k, v in sorted(counts.items()):
            if k.startswith(kind + "/") and n:
                out[f"draws_{kind}_{k.split('/', 1)[1]}"] = v / n
    return out
