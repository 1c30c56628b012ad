"""The self-contained HTML page: tables of the report JSON plus PNG plots embedded as data URIs.

The markup is a jinja2 template (``templates/report.html.j2``, autoescaped); this module draws
the plots and shapes table rows.

matplotlib's Agg backend draws the plots (no display, no fonts or scripts from the network);
the page has no external references at all, so it opens from a file or an email attachment.
Plots are drawn with fixed sizes, fonts and metadata, so the same JSON gives the same bytes.
"""

from __future__ import annotations

import base64
import functools
import io
import itertools
from typing import Any

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from dataprep.report import curation

# section id -> title; the order of the page
SECTIONS = (
    ("overview", "Overview"),
    ("corpora", "Corpora"),
    ("languages", "Languages"),
    ("audio", "Audio"),
    ("text", "Text"),
    ("augmentation", "Augmentation"),
    ("duplicates", "Duplicates and evaluation overlap"),
    ("rejects", "Rejects"),
    ("curation", "CLAP-score curation"),
    ("shards", "Shard balance"),
    ("outliers", "Outliers (listen to these first)"),
)
# section id -> plot names it must show
PLOTS = {
    "corpora": ("corpus_hours", "duration_hist"),
    "languages": ("lang_samples",),
    "audio": ("audio_hists",),
    "text": ("text_hists",),
    "augmentation": ("text_kinds",),
    "rejects": ("reject_reasons",),
    "curation": ("clap_scores",),
    "shards": ("shard_bytes",),
}
_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}img{max-width:100%;display:block}
code{font-size:90%}section{margin-bottom:2.5em}"""


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _bar(labels: list[str], values: list[float], title: str, xlabel: str) -> str:
    fig, ax = plt.subplots(figsize=(8, max(1.5, 0.35 * len(labels) + 1)))
    ax.barh(range(len(labels)), values, color="#4c72b0")
    ax.set_yticks(range(len(labels)), labels=labels)
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    fig.tight_layout()
    return _png(fig)


def _hist_axes(ax: Any, summary: dict[str, Any], title: str) -> None:
    edges = summary["edges"]
    counts = summary["hist"][1:-1]  # in-range bins; under/overflow are in the table
    widths = [b - a for a, b in itertools.pairwise(edges)]
    ax.bar(
        edges[:-1],
        counts,
        width=widths,
        align="edge",
        color="#55a868",
        edgecolor="#333",
        linewidth=0.3,
    )
    ax.set_title(f"{title} (n={summary['count']})", fontsize=9)
    ax.tick_params(labelsize=7)


def _grid(summaries: dict[str, dict[str, Any]], cols: int = 3) -> str:
    names = list(summaries)
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < len(names):
            _hist_axes(ax, summaries[names[i]], names[i])
            if names[i] == "clip_ratio":
                ax.set_xscale("symlog", linthresh=1e-5)
        else:
            ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def plots(r: dict[str, Any]) -> dict[str, str]:
    """Plot name -> base64 PNG."""
    out: dict[str, str] = {}
    corp = r["by_corpus"]
    out["corpus_hours"] = _bar(
        list(corp), [corp[c]["hours"] for c in corp], "hours per corpus", "hours"
    )
    edges = r["duration_edges"]
    fig, ax = plt.subplots(figsize=(8, 3))
    bottom = [0] * (len(edges) - 1)
    for c in corp:
        counts = corp[c]["duration_hist"][1:-1]
        ax.bar(edges[:-1], counts, width=0.5, align="edge", bottom=bottom, label=c)
        bottom = [a + b for a, b in zip(bottom, counts)]
    ax.set_xlabel("clip duration (s)")
    ax.set_ylabel("samples")
    ax.set_title("duration histogram by corpus")
    if corp:
        ax.legend(fontsize=7)
    fig.tight_layout()
    out["duration_hist"] = _png(fig)
    langs = r["by_lang"]
    out["lang_samples"] = _bar(
        list(langs), [langs[k]["samples"] for k in langs], "samples per language", "samples"
    )
    out["audio_hists"] = _grid(r["audio"])
    out["text_hists"] = _grid({k: r["text"][k] for k in ("text_chars", "chars_per_s")}, cols=2)
    fam = r["augmentation"]["families"]
    out["text_kinds"] = _bar(
        list(fam) or ["(none)"], list(fam.values()) or [0], "texts by kind", "texts"
    )
    reasons = r["rejects"]["by_reason"]
    out["reject_reasons"] = _bar(
        list(reasons) or ["(none)"],
        list(reasons.values()) or [0],
        "input rejects by stage/reason",
        "inputs",
    )
    labels, values = [], []
    for split, s in r["shards"].items():
        for e in s["list"]:
            labels.append(f"{split}/{e['name']}")
            values.append(e["bytes"] / 1e6)
    out["shard_bytes"] = _bar(labels, values, "shard sizes", "MB")
    out["clap_scores"] = _png(curation.plot(r["curation"], plt))
    return out


def _num(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else v


def _shard_row(split: str, v: dict[str, Any]) -> list[Any]:
    b, n = v["bytes"], v["samples"]
    return [split, v["count"], round(v["total_bytes"] / 1e6, 3), b and b["max_over_mean"],
            b and b["cv"], n and n["min"], n and n["max"]]  # fmt: skip


# Row builders the template maps over report sections (data shaping here, markup there).
STAT_COLS = ["metric", "count", "mean", "min", "p05", "p50", "p95", "max"]
SAMPLING_COLS = ("samples", "hours", "speakers", "data_share", "weight", "draw_share")
_FILTERS = {
    "num": _num,
    "group_row": lambda kv: [kv[0], kv[1]["samples"], kv[1]["hours"], kv[1]["speakers"]],
    "sampling_row": lambda kv: [kv[0], *(kv[1][c] for c in SAMPLING_COLS)],
    "stat_row": lambda kv: [kv[0], *[kv[1][c] for c in STAT_COLS[1:]]],
    "distinct_row": lambda kv: [kv[0], kv[1]["texts"], kv[1]["distinct_1"], kv[1]["distinct_2"]],
    "source_detail": lambda x: [x["source"], x["detail"]],
    "example_rows": lambda ex: [[k, x["source"], x["detail"]] for k, xs in ex.items() for x in xs],
    "outlier_row": lambda x: [x["key"], x["corpus"], x["source"], x["value"]],
    "shard_row": lambda kv: _shard_row(*kv),
    "decision_rows": lambda kv: [[kv[0], d, n] for d, n in sorted(kv[1].items())],
    "kind_rows": lambda kv: [[kv[0], f, *[s[c] for c in STAT_COLS[1:]]] for f, s in kv[1].items()],
    "lowest_row": lambda x: [x["key"], x["corpus"], x["score"], x["text"]],
}


@functools.lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dataprep.report", "templates"),
        autoescape=True,  # every value of the report is escaped (corpus text, file names)
        undefined=jinja2.StrictUndefined,  # a renamed report key fails loudly, not blank
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(_FILTERS)
    return env


def render_html(r: dict[str, Any]) -> str:
    """The page for one report JSON (``templates/report.html.j2``); same JSON, same bytes."""
    page = _env().get_template("report.html.j2")
    return page.render(
        r=r, imgs=plots(r), sections=SECTIONS, plots=PLOTS, style=_STYLE, stat_cols=STAT_COLS
    )
