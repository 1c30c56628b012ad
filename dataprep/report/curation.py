"""The report's CLAP-score section: the score distribution per corpus and text kind.

Read from ``<split>/scores.parquet`` (one row per scored (audio, text) pair, written by the
build's curation, dataprep/curation.py) and ``build.json`` (the configured cuts and the
percentile score each group was cut at). Every scored pair counts, the rejected ones included:
the distribution is what the scoring model saw, the decisions say what the build did with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dataprep.core import parquet
from dataprep.core.shards import BUILD_JSON
from dataprep.curation import KEPT, SCORES
from dataprep.report.stats import Hist, kind_family

# cosine similarity: -1..1 in steps of 0.05
EDGES = [round(-1.0 + 0.05 * i, 2) for i in range(41)]
LOWEST = 5  # kept pairs with the lowest primary score: the next ones a stricter cut would drop


def _build_settings(shards_dir: Path) -> tuple[dict[str, Any], dict[str, float]]:
    p = shards_dir / BUILD_JSON
    if not p.is_file():
        return {}, {}
    b = json.loads(p.read_text())
    cur = ((b.get("config") or {}).get("build") or {}).get("curation") or {}
    cuts: dict[str, float] = {}
    for c in (b.get("counts") or {}).values():
        cuts.update(c.get("clap_score_cuts") or {})
    keep = ("model", "min_score", "percentile", "per", "splits")
    return {k: cur.get(k) for k in keep}, dict(sorted(cuts.items()))


def curation_section(shards_dir: str | Path, splits: list[str]) -> dict[str, Any]:
    """``{"present": False}`` without scores; otherwise per corpus and kind family the score
    histogram and summary, the decisions per corpus, the cuts, the lowest kept pairs."""
    root = Path(shards_dir)
    rows = [
        r
        for split in splits
        if (root / split / SCORES).is_file()
        for r in parquet.read_table(root / split / SCORES).to_pylist()
    ]
    if not rows:
        return {"present": False}
    settings, cuts = _build_settings(root)
    hists: dict[str, dict[str, Hist]] = {}
    decisions: dict[str, dict[str, int]] = {}
    for r in rows:
        fam = "primary" if r["primary"] else kind_family(r["kind"])
        hists.setdefault(r["corpus"], {}).setdefault(fam, Hist(EDGES)).add(r["score"])
        if r["primary"]:
            d = decisions.setdefault(r["corpus"], {"scored": 0, KEPT: 0})
            d["scored"] += 1
            d[r["decision"]] = d.get(r["decision"], 0) + 1
    kept = sorted(
        (r for r in rows if r["primary"] and r["decision"] == KEPT),
        key=lambda r: (r["score"], r["key"]),
    )
    return {
        "present": True,
        "settings": settings,
        "cuts": cuts,
        "pairs": len(rows),
        "decisions": dict(sorted(decisions.items())),
        "by_corpus_kind": {
            c: {f: h.summary() for f, h in sorted(fams.items())}
            for c, fams in sorted(hists.items())
        },
        "lowest_kept": [
            {"key": r["key"], "corpus": r["corpus"], "score": r["score"], "text": r["text"]}
            for r in kept[:LOWEST]
        ],
    }


def plot(section: dict[str, Any], plt: Any) -> Any:
    """One panel per corpus: the score histogram of each kind family (the primary text, on
    which the sample is decided, apart), the corpus's percentile cut and ``min_score``."""
    corpora = list(section.get("by_corpus_kind", {}))
    cols = min(3, max(1, len(corpora)))
    rows = -(-max(1, len(corpora)) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    if not corpora:
        axes[0][0].set_title("no CLAP scores in this shard set (build.curation off)")
        axes[0][0].axis("off")
    min_score = (section.get("settings") or {}).get("min_score")
    for ax, corpus in zip(axes.flat, corpora):
        for fam, s in section["by_corpus_kind"][corpus].items():
            mids = [(a + b) / 2 for a, b in zip(s["edges"], s["edges"][1:])]
            ax.step(mids, s["hist"][1:-1], where="mid", label=f"{fam} ({s['count']})")
        cut = section["cuts"].get(corpus, section["cuts"].get("all"))
        for x, style, name in ((cut, "--", "percentile cut"), (min_score, ":", "min_score")):
            if x is not None:
                ax.axvline(x, color="#c44e52", linestyle=style, linewidth=1, label=name)
        ax.set_title(f"{corpus}: CLAP score by text kind", fontsize=9)
        ax.set_xlabel("cosine(audio, text)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(corpora) :]:
        if corpora:
            ax.axis("off")
    fig.tight_layout()
    return fig
