"""Shard-set level inputs of the report: which shards exist, one shard's :class:`Partial`, and
the sections read from ``rejects.parquet``, ``shards.json`` and ``build.json``.

No Ray here (DESIGN: Ray lives in pipelines/ and dataprep/build/executor.py); the pipeline maps
:func:`summarize_shard` over shards as Ray tasks and calls :func:`assemble`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dataprep.core import parquet, storage
from dataprep.core.balance import NO_LANG, stratum_shares
from dataprep.core.config import SamplingConfig
from dataprep.core.sample import SPLITS, is_text_reject
from dataprep.core.shards import (
    BUILD_JSON,
    INDEX,
    REJECTS,
    SHARDS_JSON,
    check_listing,
    read_shards_json,
)
from dataprep.core.tario import iter_shard
from dataprep.report.curation import curation_section
from dataprep.report.stats import Partial, summarize_samples

log = logging.getLogger(__name__)
EXAMPLES = 3


class ReportError(ValueError):
    """The directory is not a shard set the report can read."""


def _splits(root: str | Path) -> list[str]:
    """The splits under a shard-set root: the standard ones present, then (locally) any other
    folder holding a shards.json. Remote: the standard splits whose shards.json exists."""
    if storage.is_remote(root):
        return [s for s in SPLITS if storage.exists(storage.join(root, s, SHARDS_JSON))]
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root} is not a directory")
    return [s for s in SPLITS if (root / s).is_dir()] + sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and p.name not in SPLITS and (p / SHARDS_JSON).is_file()
    )


def shard_jobs(shards_dir: str | Path) -> list[tuple[str, str, list[str]]]:
    """``(split, tar path, excluded keys)`` for every shard of every finished split, in order.
    ``shards_dir`` may be a URI (``core.storage``): its listing is checked against each
    shards.json first (a missing or resized object is a ReportError naming it)."""
    root = storage.location(shards_dir)
    jobs = []
    for split in _splits(root):
        split_dir = storage.join(root, split)
        try:
            meta = read_shards_json(split_dir)
        except FileNotFoundError:
            log.warning("%s/%s has no shards.json (unfinished split); skipped", root, split)
            continue
        if storage.is_remote(split_dir):
            try:
                check_listing(split_dir, {e["name"]: e.get("bytes") for e in meta["shards"]})
            except ValueError as err:
                raise ReportError(str(err)) from None
        exclude = sorted(meta.get("exclude", []))
        for entry in meta["shards"]:
            jobs.append((split, str(storage.join(split_dir, entry["name"])), exclude))
    if not jobs:
        raise ReportError(
            f"{root}: no finished split (<split>/shards.json) found — is this a shard set?"
        )
    return jobs


def _table(loc: str | Path, columns: list[str] | None = None) -> Any:
    """A parquet file (local or remote) as a pyarrow table; None when it does not exist."""
    if not storage.exists(loc):
        return None
    return parquet.read_table(loc, columns=columns)


def summarize_shard(split: str, tar: str, exclude: list[str]) -> tuple[Partial, list[str]]:
    """One shard's partial statistics; a member that does not decode is reported, not fatal."""
    p = Partial()
    problems: list[str] = []
    skip = set(exclude)
    try:
        for sample in iter_shard(tar):
            if sample["__key__"] in skip:
                continue  # a cross-shard duplicate excluded by the builder: not in the data set
            p.add(sample, split)
    except storage.StorageError:
        raise  # the endpoint, not the shard: no report with shards silently missing
    except Exception as e:  # noqa: BLE001 - a corrupt tar must not stop the report; it is listed instead
        problems.append(f"{Path(tar).parent.name}/{Path(tar).name}: {type(e).__name__}: {e}")
    return p, problems


def rejects_section(shards_dir: str | Path, splits: list[str]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for split in splits:
        table = _table(storage.join(storage.location(shards_dir), split, REJECTS))
        if table is not None:
            for r in table.to_pylist():
                rows.append({**r, "split": split})
    by_reason: dict[str, int] = {}
    text_by_reason: dict[str, int] = {}
    by_corpus: dict[str, int] = {}
    by_stage: dict[str, int] = {}
    examples: dict[str, list[dict[str, str]]] = {}
    for r in sorted(rows, key=lambda r: (r["stage"], r["reason"], r["source"])):
        k = f"{r['stage']}/{r['reason']}"
        by_stage[r["stage"]] = by_stage.get(r["stage"], 0) + 1
        if is_text_reject(r):
            # A rejected generated text: its sample was kept, so it is no input reject.
            text_by_reason[r["reason"]] = text_by_reason.get(r["reason"], 0) + 1
        else:
            by_reason[k] = by_reason.get(k, 0) + 1
            by_corpus[r["corpus"] or "?"] = by_corpus.get(r["corpus"] or "?", 0) + 1
        ex = examples.setdefault(k, [])
        if len(ex) < EXAMPLES:
            ex.append({"source": r["source"], "detail": r["detail"], "split": r["split"]})
    n_texts = sum(text_by_reason.values())

    def ranked(d: dict[str, int]) -> dict[str, int]:
        return dict(sorted(d.items(), key=lambda kv: (-kv[1], kv[0])))

    return {
        "total": len(rows),  # rows of rejects.parquet: inputs + generated texts
        "inputs": len(rows) - n_texts,  # inputs that gave no sample
        "generated_texts": n_texts,  # generated texts (LLM...) rejected; their samples kept
        "by_reason": ranked(by_reason),  # input rejects
        "text_by_reason": ranked(text_by_reason),
        "by_stage": dict(sorted(by_stage.items())),
        "by_corpus": dict(sorted(by_corpus.items())),  # input rejects
        "examples": examples,
        "_rows": rows,  # consumed by assemble (duplicates, LLM), not written
    }


def shards_section(shards_dir: str | Path, splits: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in splits:
        meta = read_shards_json(storage.join(storage.location(shards_dir), split))
        entries = [
            {"name": e["name"], "samples": e["samples"], "bytes": e["bytes"]}
            for e in meta["shards"]
        ]
        b = [e["bytes"] for e in entries]
        n = [e["samples"] for e in entries]

        def stat(v: list[int]) -> dict[str, Any]:
            mean = sum(v) / len(v)
            sd = (sum((x - mean) ** 2 for x in v) / len(v)) ** 0.5
            return {
                "min": min(v),
                "max": max(v),
                "mean": round(mean, 4),
                "cv": round(sd / mean, 6) if mean else None,
                "max_over_mean": round(max(v) / mean, 6) if mean else None,
            }

        out[split] = {
            "count": len(entries),
            "total_bytes": sum(b),
            "bytes": stat(b) if b else None,
            "samples": stat(n) if n else None,
            "excluded": len(meta.get("exclude", [])),
            "list": entries,
        }
    return out


def build_section(shards_dir: str | Path) -> dict[str, Any]:
    p = storage.join(storage.location(shards_dir), BUILD_JSON)
    if not storage.exists(p):
        return {"present": False}
    b = storage.read_json(p)
    cfg = b.get("config") or {}
    return {
        "present": True,
        "name": cfg.get("name"),
        "feature_fingerprint": b.get("feature_fingerprint"),
        "inputs": b.get("inputs"),
        "counts": {
            s: {k: v for k, v in c.items() if k in ("samples", "rejects")}
            for s, c in sorted((b.get("counts") or {}).items())
        },
        "corpora": [
            {"name": c.get("name"), "reader": c.get("reader"), "root": c.get("root")}
            for c in (cfg.get("build") or {}).get("corpora", [])
        ],
        "llm": ((cfg.get("build") or {}).get("augment") or {}).get("llm", {}).get("server"),
    }


def sampling_section(shards_dir: str | Path, sampling: SamplingConfig) -> dict[str, Any]:
    """Per language and per corpus of the train split: samples, hours, speakers, the data's
    share, the configured multiplier and the expected share of training draws under
    ``loader.sampling`` (:func:`dataprep.core.balance.stratum_shares`, what the loader draws)."""
    cols = ["corpus", "lang", "duration", "speaker"]
    table = _table(storage.join(storage.location(shards_dir), "train", INDEX), cols)
    if table is None:
        return {}
    t = table.to_pydict()
    strata: dict[tuple[str, str], int] = {}
    for c, lang in zip(t["corpus"], t["lang"]):
        key = (str(c or ""), str(lang or NO_LANG))
        strata[key] = strata.get(key, 0) + 1
    shares = stratum_shares(
        strata, sampling.by, sampling.alpha, sampling.corpus_weights, sampling.lang_weights
    )
    out: dict[str, Any] = {"by": sampling.by, "alpha": sampling.alpha}
    for kind, i, weights in (
        ("lang", 1, sampling.lang_weights),
        ("corpus", 0, sampling.corpus_weights),
    ):
        rows: dict[str, dict[str, Any]] = {}
        for j, (c, lang) in enumerate(zip(t["corpus"], t["lang"])):
            name = (str(c or ""), str(lang or NO_LANG))[i]
            row = rows.setdefault(name, {"samples": 0, "seconds": 0.0, "speakers": set()})
            row["samples"] += 1
            row["seconds"] += float(t["duration"][j] or 0.0)
            if t["speaker"][j]:
                row["speakers"].add(t["speaker"][j])
        n = len(t["corpus"])
        out[f"by_{kind}"] = {
            name: {
                "samples": r["samples"], "hours": round(r["seconds"] / 3600, 6),
                "speakers": len(r["speakers"]), "data_share": round(r["samples"] / n, 6),
                "weight": weights.get(name, 1.0),
                "draw_share": round(sum(v for s, v in shares.items() if s[i] == name), 6),
            }
            for name, r in sorted(rows.items())
        }  # fmt: skip
    return out


def assemble(
    shards_dir: str | Path, partial: Partial, problems: list[str],
    sampling: SamplingConfig | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The whole report JSON (no timings, no absolute times: two runs give identical bytes).
    ``sampling``: the experiment's ``loader.sampling`` (default: none, the data's shares)."""
    jobs = shard_jobs(shards_dir)
    splits = list(dict.fromkeys(s for s, _, _ in jobs))
    rej = rejects_section(shards_dir, splits)
    rows = rej.pop("_rows")
    report: dict[str, Any] = {
        "shards_dir": str(shards_dir)
        if storage.is_remote(shards_dir)
        else str(Path(shards_dir).resolve()),
        "splits": splits,
        "build": build_section(shards_dir),
    }
    report.update(summarize_samples(partial))
    accepted = sum(n for k, n in report["augmentation"]["kinds"].items() if k.startswith("llm:"))
    llm_rejected = sum(1 for r in rows if is_text_reject(r))
    report["augmentation"]["llm"] = {
        "accepted": accepted,
        "rejected": llm_rejected,
        "acceptance_rate": round(accepted / (accepted + llm_rejected), 6)
        if accepted + llm_rejected
        else None,
    }
    dup = report["duplicates"]
    for reason in ("duplicate", "near_duplicate", "eval_overlap"):
        hit = sorted((r for r in rows if r["reason"] == reason), key=lambda r: r["source"])
        dup[f"rejected_{reason}"] = len(hit)
        dup[f"{reason}_examples"] = [
            {"source": r["source"], "detail": r["detail"]} for r in hit[:EXAMPLES]
        ]
    report["rejects"] = rej
    report["curation"] = curation_section(shards_dir, splits)
    report["shards"] = shards_section(shards_dir, splits)
    report["problems"] = sorted(problems)
    report["sampling"] = sampling_section(shards_dir, sampling or SamplingConfig())
    return report
