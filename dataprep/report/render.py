"""The self-contained HTML page: tables of the report JSON plus PNG plots embedded as data URIs.

matplotlib's Agg backend draws the plots (no display, no fonts or scripts from the network);
the page has no external references at all, so it opens from a file or an email attachment.
Plots are drawn with fixed sizes, fonts and metadata, so the same JSON gives the same bytes.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

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
    ax.bar(edges[:-1], counts, width=widths, align="edge", color="#55a868", edgecolor="#333", linewidth=0.3)
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
    out["corpus_hours"] = _bar(list(corp), [corp[c]["hours"] for c in corp], "hours per corpus", "hours")
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
    out["lang_samples"] = _bar(list(langs), [langs[k]["samples"] for k in langs], "samples per language", "samples")
    out["audio_hists"] = _grid(r["audio"])
    out["text_hists"] = _grid({k: r["text"][k] for k in ("text_chars", "chars_per_s")}, cols=2)
    fam = r["augmentation"]["families"]
    out["text_kinds"] = _bar(list(fam) or ["(none)"], list(fam.values()) or [0], "texts by kind", "texts")
    reasons = r["rejects"]["by_reason"]
    out["reject_reasons"] = _bar(list(reasons) or ["(none)"], list(reasons.values()) or [0], "rejects by stage/reason", "inputs")
    labels, values = [], []
    for split, s in r["shards"].items():
        for e in s["list"]:
            labels.append(f"{split}/{e['name']}")
            values.append(e["bytes"] / 1e6)
    out["shard_bytes"] = _bar(labels, values, "shard sizes", "MB")
    return out


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _table(header: list[str], rows: list[list[Any]], left: int = 1) -> str:
    th = "".join(f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>" for i, h in enumerate(header))
    body = []
    for row in rows:
        tds = "".join(f'<td class="l">{_e(v)}</td>' if i < left else f"<td>{_e(_num(v))}</td>" for i, v in enumerate(row))
        body.append(f"<tr>{tds}</tr>")
    return f"<table><tr>{th}</tr>{''.join(body)}</table>"


def _num(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else v


def _img(name: str, b64: str) -> str:
    return f'<img data-plot="{name}" alt="{name}" src="data:image/png;base64,{b64}">'


def render_html(r: dict[str, Any]) -> str:
    imgs = plots(r)
    body: dict[str, str] = {}
    t, b = r["totals"], r["build"]
    body["overview"] = _table(["figure", "value"], [
        ["shard set", r["shards_dir"]], ["build config", b.get("name")], ["feature fingerprint", b.get("feature_fingerprint")],
        ["splits", ", ".join(r["splits"])], ["samples", t["samples"]], ["hours", t["hours"]],
        ["speakers", t["speakers"]], ["corpora", t["corpora"]], ["languages", t["languages"]],
        ["inputs rejected", r["rejects"]["total"]], ["unreadable shards", len(r["problems"])],
    ]) + "".join(f"<p>problem: {_e(p)}</p>" for p in r["problems"])

    def group_table(g: dict[str, Any], name: str) -> str:
        return _table([name, "samples", "hours", "speakers"], [[k, v["samples"], v["hours"], v["speakers"]] for k, v in g.items()])

    body["corpora"] = group_table(r["by_corpus"], "corpus") + group_table(r["by_split"], "split")
    body["languages"] = group_table(r["by_lang"], "language")
    stat_cols = ["metric", "count", "mean", "min", "p05", "p50", "p95", "max"]
    body["audio"] = _table(stat_cols, [[m, *[s[c] for c in stat_cols[1:]]] for m, s in r["audio"].items()]) + (
        "<p>SNR: percentile estimate from the log-mel (90th - 10th percentile frame energy). "
        "Quantiles are histogram bin upper edges.</p>"
    ) + _table(["flag", "samples"], [[k, v] for k, v in r["flags"].items()])
    tx = r["text"]
    lid = tx["lid"]
    body["text"] = _table(stat_cols, [[m, *[tx[m][c] for c in stat_cols[1:]]] for m in ("text_chars", "chars_per_s")]) + _table(
        ["language ID", "value"], [["checked", lid["checked"]], ["mismatch", lid["mismatch"]], ["agreement", lid["agreement"]]]
    ) + _table(["vocabulary", "distinct tokens"], [[k, v] for k, v in tx["vocab"].items()]) + _table(
        ["kind family", "texts", "distinct-1", "distinct-2"],
        [[f, d["texts"], d["distinct_1"], d["distinct_2"]] for f, d in tx["distinct"].items()],
    )
    aug = r["augmentation"]
    llm = aug["llm"]
    body["augmentation"] = _table(["kind", "texts"], [[k, v] for k, v in aug["kinds"].items()]) + _table(
        ["family", "share"], [[k, v] for k, v in aug["shares"].items()]
    ) + _table(["LLM captions", "value"], [["accepted", llm["accepted"]], ["rejected", llm["rejected"]],
                                           ["acceptance rate", llm["acceptance_rate"]]])
    d = r["duplicates"]
    body["duplicates"] = _table(["figure", "value"], [
        ["identical audio groups in the set", len(d["audio_groups"])], ["duplicate samples in the set", d["duplicate_samples"]],
        ["rejected as duplicate", d["rejected_duplicate"]], ["rejected as eval overlap", d["rejected_eval_overlap"]],
    ]) + _table(["rejected example", "detail"], [[x["source"], x["detail"]] for x in d["duplicate_examples"] + d["eval_overlap_examples"]], left=2) + "".join(
        f"<p>same audio: {_e(', '.join(g))}</p>" for g in d["audio_groups"][:20]
    )
    rj = r["rejects"]
    ex_rows = [[k, x["source"], x["detail"]] for k, xs in rj["examples"].items() for x in xs]
    body["rejects"] = _table(["stage/reason", "inputs"], [[k, v] for k, v in rj["by_reason"].items()]) + _table(
        ["corpus", "inputs"], [[k, v] for k, v in rj["by_corpus"].items()]
    ) + _table(["stage/reason", "example source", "detail"], ex_rows, left=3)
    body["shards"] = _table(["split", "shards", "MB", "bytes max/mean", "bytes cv", "samples min", "samples max"], [
        [s, v["count"], round(v["total_bytes"] / 1e6, 3), v["bytes"]["max_over_mean"] if v["bytes"] else None,
         v["bytes"]["cv"] if v["bytes"] else None, v["samples"]["min"] if v["samples"] else None,
         v["samples"]["max"] if v["samples"] else None] for s, v in r["shards"].items()
    ])
    body["outliers"] = "".join(
        f"<h3>{_e(c)}</h3>" + _table(["key", "corpus", "source @ segment (s)", "value"],
                                    [[x["key"], x["corpus"], x["source"], x["value"]] for x in xs], left=3)
        for c, xs in r["outliers"].items() if xs
    ) + "<p>Keys are sample keys (<code>index.parquet</code> gives the shard); the source is the file the clip was cut from.</p>"

    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>polyclap data-quality report</title>", f"<style>{_STYLE}</style></head><body>",
             "<h1>polyclap data-quality report</h1>", "<nav>" + " · ".join(f'<a href="#{s}">{_e(t)}</a>' for s, t in SECTIONS) + "</nav>"]
    for sid, title in SECTIONS:
        pics = "".join(_img(n, imgs[n]) for n in PLOTS.get(sid, ()))
        parts.append(f'<section id="{sid}"><h2>{_e(title)}</h2>{body[sid]}{pics}</section>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
