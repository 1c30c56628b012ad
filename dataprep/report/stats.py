"""Per-shard partial statistics and their exact merge.

A :class:`Partial` holds only mergeable summaries — counts, sums, min/max, fixed-edge
histograms, sets (speakers, vocabulary, n-gram hashes, audio hashes) and bounded top-k lists —
so the report scales with the number of shards: each shard is summarized where it lies, the
driver merges summaries in shard order (deterministic), and no per-sample array ever reaches
the driver. Quantiles are read off the histograms (upper edge of the bin holding the quantile).

Definitions (the tests recount these from the tars):
- hours/duration: ``json.duration``; loudness ``stats.lufs`` (source, before normalization),
  level ``stats.dbfs`` (segment RMS in dBFS), ``stats.clip_ratio``, ``stats.silence_ratio``.
- SNR estimate (dB): from the log-mel, per-frame energy ``10 log10(sum_f exp(mel))``; the 90th
  minus the 10th percentile over frames (active level over noise floor), floored at 0.
- text: the primary text (``txt``); characters per second only for transcribed speech
  (``attributes.task == "asr"``); tokens: lower-cased ``\\w+`` runs, CJK/kana one per character.
- language-ID agreement: samples with an original text and a declared language; a
  ``lang_mismatch:*`` flag is a disagreement.
- diversity: distinct-1/2 = distinct n-grams / all n-grams over every ``texts`` entry, per kind
  family (original, template, nlpaug, llm).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dataprep.core.hashing import stable_int
from dataprep.core.sample import (
    KIND_LLM_PREFIX,
    KIND_NLPAUG_PREFIX,
    KIND_ORIGINAL,
    KIND_TEMPLATE,
    MEL,
    META,
    TEXT,
)

SPEECH_TASKS = ("asr",)
TOP_K = 10

_EPS = 1e-9
EDGES: dict[str, list[float]] = {
    "duration_s": [round(x * 0.5, 2) for x in range(61)],  # 0..30 s
    "lufs": [float(x) for x in range(-70, 1)],
    "dbfs": [float(x) for x in range(-80, 1)],
    "clip_ratio": [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0 + _EPS],
    "silence_ratio": [round(x * 0.05, 2) for x in range(20)] + [1.0 + _EPS],
    "snr_db": [float(x) for x in range(0, 82, 2)],
    "text_chars": [float(x) for x in range(0, 401, 10)],
    "chars_per_s": [float(x) for x in range(41)],
}
AUDIO_METRICS = ("duration_s", "lufs", "dbfs", "clip_ratio", "silence_ratio", "snr_db")
TEXT_METRICS = ("text_chars", "chars_per_s")
# (criterion, metric, largest first?) — the samples a user should listen to first
# Clipping/silence lists only hold samples that have any (a list of zeros helps nobody).
POSITIVE_ONLY = ("most_clipped", "most_silent")
OUTLIERS = (
    ("longest", "duration_s", True),
    ("shortest", "duration_s", False),
    ("most_clipped", "clip_ratio", True),
    ("most_silent", "silence_ratio", True),
    ("lowest_snr", "snr_db", False),
    ("quietest", "dbfs", False),
    ("fastest_speech", "chars_per_s", True),
    ("slowest_speech", "chars_per_s", False),
)
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]|\w+")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def kind_family(kind: str) -> str:
    if kind.startswith(KIND_LLM_PREFIX):
        return "llm"
    if kind.startswith(KIND_NLPAUG_PREFIX):
        return "nlpaug"
    if kind in (KIND_ORIGINAL, KIND_TEMPLATE):
        return kind
    return "other"


def snr_estimate_db(mel: np.ndarray) -> float:
    """Percentile SNR from a log-mel ``[n_mels, T]`` (see module docstring)."""
    m = np.asarray(mel, dtype=np.float64)
    frame_db = 10.0 * np.log10(np.maximum(np.exp(m).sum(axis=0), 1e-30))
    hi, lo = np.percentile(frame_db, [90, 10])
    return float(max(hi - lo, 0.0))


def _h64(s: str) -> int:
    return stable_int(s)


@dataclass
class Hist:
    """Fixed-edge histogram + exact count/sum/min/max. ``counts[0]`` is below the first edge,
    ``counts[-1]`` at or above the last; ``counts[i]`` is ``edges[i-1] <= v < edges[i]``."""

    edges: list[float]
    counts: list[int] = field(default_factory=list)
    n: int = 0
    total: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.edges) + 1)

    def add(self, v: float) -> None:
        v = float(v)
        if not math.isfinite(v):
            return
        self.counts[int(np.searchsorted(self.edges, v, side="right"))] += 1
        self.n += 1
        self.total += v
        self.lo, self.hi = min(self.lo, v), max(self.hi, v)

    def merge(self, o: Hist) -> None:
        self.counts = [a + b for a, b in zip(self.counts, o.counts)]
        self.n += o.n
        self.total += o.total
        self.lo, self.hi = min(self.lo, o.lo), max(self.hi, o.hi)

    def quantile(self, q: float) -> float | None:
        if self.n == 0:
            return None
        target = q * self.n
        acc = 0
        for i, c in enumerate(self.counts):
            acc += c
            if acc >= target and c > 0:
                # upper edge of the bin (the exact max for the open-ended last bin)
                return self.hi if i >= len(self.edges) else min(self.edges[i], self.hi)
        return self.hi

    def summary(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else round(x, 6)

        return {
            "count": self.n,
            "mean": r(self.total / self.n) if self.n else None,
            "min": r(self.lo) if self.n else None,
            "max": r(self.hi) if self.n else None,
            "p05": r(self.quantile(0.05)),
            "p50": r(self.quantile(0.5)),
            "p95": r(self.quantile(0.95)),
            "edges": self.edges,
            "hist": self.counts,
        }


@dataclass
class Group:
    samples: int = 0
    seconds: float = 0.0
    speakers: set[str] = field(default_factory=set)
    duration: Hist = field(default_factory=lambda: Hist(EDGES["duration_s"]))

    def add(self, dur: float, speaker: str | None) -> None:
        self.samples += 1
        self.seconds += dur
        if speaker:
            self.speakers.add(speaker)
        self.duration.add(dur)

    def merge(self, o: Group) -> None:
        self.samples += o.samples
        self.seconds += o.seconds
        self.speakers |= o.speakers
        self.duration.merge(o.duration)

    def summary(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "hours": round(self.seconds / 3600.0, 6),
            "seconds": round(self.seconds, 4),
            "speakers": len(self.speakers),
            "duration_hist": self.duration.counts,
        }


Ranked = tuple[Any, ...]  # (value, key, ...): sorted by value, ties by key


def _push(top: list[Ranked], item: Ranked, largest: bool) -> list[Ranked]:
    top.append(item)
    top.sort(key=lambda t: ((-t[0] if largest else t[0]), t[1]))
    return top[:TOP_K]


@dataclass
class Partial:
    """Mergeable statistics of one or more shards."""

    samples: int = 0
    by_corpus: dict[str, Group] = field(default_factory=dict)
    by_lang: dict[str, Group] = field(default_factory=dict)
    by_split: dict[str, Group] = field(default_factory=dict)
    metrics: dict[str, Hist] = field(default_factory=lambda: {k: Hist(v) for k, v in EDGES.items()})
    lid_checked: int = 0
    lid_mismatch: int = 0
    mismatch_keys: list[Ranked] = field(default_factory=list)
    vocab: dict[str, set[str]] = field(default_factory=dict)
    ngrams: dict[str, list[set[int]]] = field(default_factory=dict)  # family -> [1-grams, 2-grams]
    ngram_totals: dict[str, list[int]] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    flags: dict[str, int] = field(default_factory=dict)
    audio_sha1: dict[str, list[str]] = field(default_factory=dict)
    top: dict[str, list[Ranked]] = field(default_factory=dict)

    def add(self, sample: dict[str, Any], split: str) -> None:
        meta = sample[META]
        key = sample["__key__"]
        corpus = str(meta.get("corpus") or "?")
        lang = str(meta.get("lang") or "und")
        dur = float(meta.get("duration") or 0.0)
        self.samples += 1
        for table, name in ((self.by_corpus, corpus), (self.by_lang, lang), (self.by_split, split)):
            table.setdefault(name, Group()).add(dur, meta.get("speaker"))
        stats = meta.get("stats") or {}
        values: dict[str, float | None] = {
            "duration_s": dur,
            "lufs": stats.get("lufs"),
            "dbfs": stats.get("dbfs"),
            "clip_ratio": stats.get("clip_ratio"),
            "silence_ratio": stats.get("silence_ratio"),
            "snr_db": snr_estimate_db(sample[MEL]),
        }
        text = sample.get(TEXT) or ""
        values["text_chars"] = float(len(text)) if text else None
        task = (meta.get("attributes") or {}).get("task")
        if text and task in SPEECH_TASKS and dur > 0:
            values["chars_per_s"] = len(text) / dur
        for name, v in values.items():
            if v is not None:
                self.metrics[name].add(v)
        for crit, metric, largest in OUTLIERS:
            v = values.get(metric)
            if v is not None and math.isfinite(v) and not (crit in POSITIVE_ONLY and v <= 0):
                where = f"{meta.get('source_uri') or meta.get('source_id')} @ {meta.get('segment')}"
                self.top[crit] = _push(
                    self.top.get(crit, []), (round(float(v), 6), key, corpus, where), largest
                )
        flags = meta.get("flags") or []
        for f in flags:
            name = f.split(":", 1)[0]
            self.flags[name] = self.flags.get(name, 0) + 1
        texts = meta.get("texts") or []
        if meta.get("lang") and any(t.get("kind") == KIND_ORIGINAL for t in texts):
            self.lid_checked += 1
            bad = [f for f in flags if f.startswith("lang_mismatch")]
            if bad:
                self.lid_mismatch += 1
                self.mismatch_keys = _push(self.mismatch_keys, (0.0, key, bad[0]), False)
        if text:
            self.vocab.setdefault(lang, set()).update(tokens(text))
        for t in texts:
            kind = str(t.get("kind") or "?")
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            fam = kind_family(kind)
            toks = tokens(str(t.get("text") or ""))
            sets = self.ngrams.setdefault(fam, [set(), set()])
            tot = self.ngram_totals.setdefault(fam, [0, 0])
            grams1 = toks
            grams2 = [f"{a}\x00{b}" for a, b in itertools.pairwise(toks)]
            sets[0].update(_h64(g) for g in grams1)
            sets[1].update(_h64(g) for g in grams2)
            tot[0] += len(grams1)
            tot[1] += len(grams2)
        sha = meta.get("audio_sha1")
        if sha:
            self.audio_sha1.setdefault(sha, []).append(key)

    def merge(self, o: Partial) -> None:
        self.samples += o.samples
        for mine, theirs in (
            (self.by_corpus, o.by_corpus),
            (self.by_lang, o.by_lang),
            (self.by_split, o.by_split),
        ):
            for k, g in theirs.items():
                mine.setdefault(k, Group()).merge(g)
        for k, h in o.metrics.items():
            self.metrics[k].merge(h)
        self.lid_checked += o.lid_checked
        self.lid_mismatch += o.lid_mismatch
        for item in o.mismatch_keys:
            self.mismatch_keys = _push(self.mismatch_keys, item, False)
        for lang, v in o.vocab.items():
            self.vocab.setdefault(lang, set()).update(v)
        for fam, (s1, s2) in o.ngrams.items():
            mine = self.ngrams.setdefault(fam, [set(), set()])
            mine[0] |= s1
            mine[1] |= s2
            tot = self.ngram_totals.setdefault(fam, [0, 0])
            tot[0] += o.ngram_totals[fam][0]
            tot[1] += o.ngram_totals[fam][1]
        for k, n in o.kinds.items():
            self.kinds[k] = self.kinds.get(k, 0) + n
        for k, n in o.flags.items():
            self.flags[k] = self.flags.get(k, 0) + n
        for sha, keys in o.audio_sha1.items():
            self.audio_sha1.setdefault(sha, []).extend(keys)
        largest = {c: lg for c, _, lg in OUTLIERS}
        for crit, items in o.top.items():
            for item in items:
                self.top[crit] = _push(self.top.get(crit, []), item, largest[crit])


def summarize_samples(p: Partial) -> dict[str, Any]:
    """The sample-derived sections of the report JSON."""

    def groups(t: dict[str, Group]) -> dict[str, Any]:
        return {k: t[k].summary() for k in sorted(t)}

    all_speakers = (
        set().union(*(g.speakers for g in p.by_corpus.values())) if p.by_corpus else set()
    )
    total_s = sum(g.seconds for g in p.by_corpus.values())
    n_texts = sum(p.kinds.values())
    families: dict[str, int] = {}
    for k, n in p.kinds.items():
        families[kind_family(k)] = families.get(kind_family(k), 0) + n
    distinct = {}
    for fam in sorted(p.ngrams):
        s1, s2 = p.ngrams[fam]
        t1, t2 = p.ngram_totals[fam]
        distinct[fam] = {
            "ngrams_1": t1,
            "ngrams_2": t2,
            "distinct_ngrams_1": len(s1),
            "distinct_ngrams_2": len(s2),
            "distinct_1": round(len(s1) / t1, 6) if t1 else None,
            "distinct_2": round(len(s2) / t2, 6) if t2 else None,
            "texts": families.get(fam, 0),
        }
    dup_groups = sorted(sorted(keys) for keys in p.audio_sha1.values() if len(keys) > 1)
    all_vocab = set().union(*p.vocab.values()) if p.vocab else set()
    return {
        "totals": {
            "samples": p.samples,
            "hours": round(total_s / 3600.0, 6),
            "seconds": round(total_s, 4),
            "speakers": len(all_speakers),
            "corpora": len(p.by_corpus),
            "languages": len(p.by_lang),
        },
        "duration_edges": EDGES["duration_s"],
        "by_corpus": groups(p.by_corpus),
        "by_lang": groups(p.by_lang),
        "by_split": groups(p.by_split),
        "audio": {m: p.metrics[m].summary() for m in AUDIO_METRICS},
        "flags": dict(sorted(p.flags.items())),
        "text": {
            **{m: p.metrics[m].summary() for m in TEXT_METRICS},
            "lid": {
                "checked": p.lid_checked,
                "mismatch": p.lid_mismatch,
                "agreement": round(1 - p.lid_mismatch / p.lid_checked, 6)
                if p.lid_checked
                else None,
                "mismatch_examples": [{"key": k, "flag": f} for _, k, f in p.mismatch_keys],
            },
            "vocab": {
                "all": len(all_vocab),
                **{lang: len(p.vocab[lang]) for lang in sorted(p.vocab)},
            },
            "distinct": distinct,
        },
        "augmentation": {
            "texts": n_texts,
            "kinds": dict(sorted(p.kinds.items())),
            "families": dict(sorted(families.items())),
            "shares": {f: round(n / n_texts, 6) for f, n in sorted(families.items())}
            if n_texts
            else {},
        },
        "duplicates": {
            "audio_groups": dup_groups,
            "duplicate_samples": sum(len(g) - 1 for g in dup_groups),
        },
        "outliers": {
            c: [
                {"key": k, "value": v, "corpus": corp, "source": src}
                for v, k, corp, src in p.top.get(c, [])
            ]
            for c, _, _ in OUTLIERS
        },
    }
