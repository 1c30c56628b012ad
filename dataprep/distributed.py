"""The Ray shard builder: scan -> plan -> execute (one task per shard) -> finalize.

The only module of ``dataprep`` that imports Ray. Works the same with an embedded local Ray
(``ray.init()`` in a plain script) and on a cluster (``ray job submit``).

Resumability: each finished shard leaves ``<split>/shard-N.tar`` plus a part record
``<split>/.parts/shard-N.json`` (index rows, rejects, fingerprints, sha256) written atomically
after the tar. A rerun skips a shard whose tar exists and matches its part record's sha256, and
redoes the rest. ``shards.json`` / ``index.parquet`` / ``rejects.parquet`` are assembled from
the parts at the end (``shards.json`` last, as the completion marker of the split).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from dataprep import dedup
from dataprep.core import atomic, features, shards, tario
from dataprep.core.config import CorpusConfig, DataConfig, config_to_dict
from dataprep.corpora import read_corpus
from dataprep.core.sample import META, Reject, SampleRef, SPLITS

log = logging.getLogger("polyclap.build")

PLAN_JSON = "plan.json"
PARTS = ".parts"
_EST_JSON_BYTES = 2048


class BuildError(RuntimeError):
    """A problem that stops the build (bad config, mixing outputs), with a user-facing message."""


# ---------------------------------------------------------------------------------- scan ---
def _ref_row(ref: SampleRef) -> dict[str, Any]:
    row = asdict(ref)
    row["labels"] = list(ref.labels)
    row["captions"] = list(ref.captions)
    row["extra"] = json.dumps(dict(ref.extra), sort_keys=True, default=str)
    return row


def ref_from_row(row: dict[str, Any]) -> SampleRef:
    r = dict(row)
    r["labels"] = tuple(r.get("labels") or ())
    r["captions"] = tuple(r.get("captions") or ())
    r["extra"] = tuple(sorted(json.loads(r.get("extra") or "{}").items()))
    for k in ("start_s", "end_s", "duration_s"):
        v = r.get(k)
        r[k] = None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)
    return SampleRef(**{k: r.get(k) for k in SampleRef.__dataclass_fields__})


def _header_duration(uri: str) -> float | None:
    """Duration from the file header (cheap; never decodes). None when unknown."""
    try:
        import soundfile as sf

        import fsspec

        with fsspec.open(uri, "rb") as f:
            info = sf.info(f)
        return float(info.frames) / float(info.samplerate) if info.samplerate else None
    except Exception:
        return None


@ray.remote
def scan_corpus(corpus: CorpusConfig) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """List one corpus: SampleRef rows (with a duration estimate) and reader rejects."""
    refs: list[dict[str, Any]] = []
    rejects: list[dict[str, str]] = []
    for item in read_corpus(corpus):
        if isinstance(item, Reject):
            rejects.append(item.as_row())
            continue
        row = _ref_row(item)
        if item.start_s is not None and item.end_s is not None:
            row["est_duration_s"] = item.end_s - item.start_s
        else:
            row["est_duration_s"] = item.duration_s or _header_duration(item.audio) or 10.0
        refs.append(row)
    return refs, rejects


# ---------------------------------------------------------------------------------- plan ---
def plan_shards(
    rows: list[dict[str, Any]], cfg: DataConfig
) -> dict[str, list[list[dict[str, Any]]]]:
    """Assign refs to splits and cut each split into shards by estimated bytes.

    Deterministic: rows are ordered by (corpus, source_id, start_s) before cutting.
    """
    from dataprep.process import assign_split

    sc = cfg.build.splits
    f = cfg.features
    bytes_per_s = f.n_mels * 2 * f.sample_rate_hz / f.hop_length
    if cfg.build.audio.keep_audio:
        bytes_per_s += f.sample_rate_hz * 1.2  # flac of 16-bit PCM
    views = 1 + cfg.build.augment.audio_views
    target = cfg.build.shards.target_mb * 1e6
    by_split: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for row in sorted(rows, key=lambda r: (r["corpus"], r["source_id"], r.get("start_s") or 0.0)):
        split = assign_split(ref_from_row(row), sc.val_fraction, sc.test_fraction, sc.salt)
        by_split[split].append(row)
    plan: dict[str, list[list[dict[str, Any]]]] = {}
    for split, items in by_split.items():
        if not items:
            continue
        cur: list[dict[str, Any]] = []
        cur_bytes = 0.0
        out: list[list[dict[str, Any]]] = []
        for row in items:
            est = views * (min(row["est_duration_s"], cfg.build.filters.max_source_duration_s) * bytes_per_s + _EST_JSON_BYTES)
            if cur and (cur_bytes + est > target or len(cur) >= cfg.build.shards.max_samples_per_shard):
                out.append(cur)
                cur, cur_bytes = [], 0.0
            cur.append(row)
            cur_bytes += est
        if cur:
            out.append(cur)
        plan[split] = out
    return plan


def build_signature(cfg: DataConfig) -> dict[str, Any]:
    """What must match for a rerun to continue writing into an existing output directory."""
    b = config_to_dict(cfg.build)
    b.pop("out", None)
    b["shards"].pop("num_cpus_per_task", None)
    b["shards"].pop("max_parallel_tasks", None)
    blob = json.dumps(b, sort_keys=True)
    return {
        "feature_fingerprint": features.feature_fingerprint(cfg.features),
        "build_config_sha256": hashlib.sha256(blob.encode()).hexdigest()[:16],
    }


# ------------------------------------------------------------------------------- execute ---
def _part_path(out: Path, split: str, name: str) -> Path:
    return out / split / PARTS / (name.removesuffix(".tar") + ".json")


def shard_is_done(out: Path, split: str, name: str) -> bool:
    tar = out / split / name
    part = _part_path(out, split, name)
    if not (tar.is_file() and part.is_file()):
        return False
    try:
        entry = json.loads(part.read_text())["entry"]
    except (OSError, ValueError, KeyError):
        return False
    return entry.get("bytes") == tar.stat().st_size and entry.get("sha256") == atomic.sha256_file(tar)


@ray.remote
def build_shard(
    cfg_json: str, out: str, split: str, name: str, rows: list[dict[str, Any]], eval_index: Any
) -> dict[str, Any]:
    """Process the refs of one shard and write its tar + part record. Returns a summary."""
    from dataprep.process import SampleProcessor

    logging.basicConfig(level=logging.INFO)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    cfg = DataConfig.model_validate_json(cfg_json)
    # One task per reserved CPU: torch's intra-op pool would otherwise start a thread per core
    # in every worker and oversubscribe the node (resampling and the STFT run in torch).
    import torch

    torch.set_num_threads(max(1, int(cfg.build.shards.num_cpus_per_task)))
    proc = SampleProcessor(cfg, augment=True, eval_index=eval_index)
    samples: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    audio_s = 0.0
    try:
        for row in rows:
            res = proc(ref_from_row(row), split)
            samples.extend(res.samples)
            rejects.extend(res.rejects)
    finally:
        proc.close()
    index_rows = []
    fps = []
    for s in samples:
        m = s[META]
        audio_s += m["duration"]
        index_rows.append(
            {
                "key": s["__key__"],
                "shard": name,
                "split": split,
                "corpus": m["corpus"],
                "lang": m["lang"],
                "duration": m["duration"],
                "text": s.get("txt", ""),
                "n_texts": len(m["texts"]),
                "labels": json.dumps(m["labels"], ensure_ascii=False),
                "speaker": m["speaker"],
                "group": m["group"],
                "audio_sha1": m["audio_sha1"],
                "frames": int(s["mel.npy"].shape[-1]),
            }
        )
        fps.append({"key": s["__key__"], "pcm": m["audio_sha1"], "fp": m.get("audio_fp", "")})
    out_dir = Path(out)
    entry = tario.write_tar_atomic(out_dir / split / name, samples)
    wall = time.perf_counter() - t0
    part = {
        "entry": entry,
        "index": sorted(index_rows, key=lambda r: r["key"]),
        "rejects": [r.as_row() for r in rejects],
        "fingerprints": sorted(fps, key=lambda r: r["key"]),
        "stats": {
            "audio_s": audio_s,
            "wall_s": wall,
            "cpu_s": time.process_time() - cpu0,
            "node_id": ray.get_runtime_context().get_node_id(),
            "host": platform.node(),
        },
    }
    atomic.atomic_write_json(_part_path(out_dir, split, name), part)
    return {"split": split, "name": name, "samples": len(samples), "rejects": len(rejects), **part["stats"],
            "reject_reasons": dict(Counter(r.reason for r in rejects))}


@ray.remote
def fingerprint_eval_corpus(cfg_json: str, corpus: CorpusConfig) -> list[tuple[str, str, Any]]:
    """Decode one evaluation corpus and return (source, pcm_sha1, fingerprint) per segment."""
    from dataprep import audio as audio_mod

    cfg = DataConfig.model_validate_json(cfg_json)
    sr = cfg.features.sample_rate_hz
    out = []
    for item in read_corpus(corpus):
        if isinstance(item, Reject):
            continue
        try:
            segs = audio_mod.load_segments(item, cfg.build.audio, sr)
        except Exception:
            continue
        for seg in segs:
            out.append((f"{item.corpus}:{item.source_id}", dedup.pcm_sha1(seg.wave), dedup.audio_fingerprint(seg.wave, sr)))
    return out


# ------------------------------------------------------------------------------ finalize ---
def resolve_cross_shard_duplicates(parts: list[dict[str, Any]], near: bool, threshold: float) -> dict[str, str]:
    """Keys to exclude -> the key they duplicate; the first in the given part order wins."""
    from dataprep.process import fp_from_hex

    index = dedup.DedupIndex(near_threshold=threshold, near=near)
    excluded: dict[str, str] = {}
    for part in parts:
        for row in part["fingerprints"]:
            fp = fp_from_hex(row["fp"]) if near else None
            dup = index.add(row["key"], row["pcm"], fp)
            if dup is not None:
                excluded[row["key"]] = dup
    return excluded


def write_table(path: Path, rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> None:
    table = pa.Table.from_pylist(rows, schema=schema) if rows else (schema or pa.schema([])).empty_table()
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


REJECT_SCHEMA = pa.schema(
    [("source", pa.string()), ("corpus", pa.string()), ("stage", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
)


def finalize_split(out: Path, split: str, names: list[str], scan_rejects: list[dict[str, str]], excluded: dict[str, str]) -> dict[str, Any]:
    parts = [json.loads(_part_path(out, split, n).read_text()) for n in names]
    index_rows = [r for p in parts for r in p["index"] if r["key"] not in excluded]
    reject_rows = list(scan_rejects) + [r for p in parts for r in p["rejects"]]
    split_excluded = sorted(k for p in parts for r in p["index"] if (k := r["key"]) in excluded)
    for k in split_excluded:
        corpus = k.rsplit("-", 1)[0]
        reject_rows.append({"source": k, "corpus": corpus, "stage": "dedup", "reason": "duplicate",
                            "detail": f"same audio as {excluded[k]} (found across shards; key excluded)"})
    write_table(out / split / shards.INDEX, index_rows)
    write_table(out / split / shards.REJECTS, reject_rows, REJECT_SCHEMA)
    meta = {
        "split": split,
        "shards": [p["entry"] for p in parts],
        "samples": sum(p["entry"]["samples"] for p in parts),
        "exclude": split_excluded,
    }
    # wids (indexed random access) reads this index; urls are relative to the index file.
    atomic.atomic_write_json(out / split / "wids-index.json", {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": f"polyclap-{split}",
        "shardlist": [{"url": e["name"], "nsamples": e["samples"]} for e in meta["shards"]],
    })
    atomic.atomic_write_json(out / split / shards.SHARDS_JSON, meta)
    return {"samples": meta["samples"] - len(split_excluded), "rejects": len(reject_rows),
            "reject_reasons": dict(Counter(r["reason"] for r in reject_rows))}


# ------------------------------------------------------------------------------- driver ---
class Progress:
    """One log line every ``every_s`` seconds: shards, samples/s, audio hours, rejects, ETA.
    Plain log lines (not a redrawn bar) so they read well in ``ray job logs``."""

    def __init__(self, total: int, every_s: float = 5.0) -> None:
        self.total = total
        self.done = 0
        self.samples = 0
        self.audio_s = 0.0
        self.reasons: Counter[str] = Counter()
        self.t0 = time.perf_counter()
        self.every_s = every_s
        self._last = 0.0

    def update(self, summary: dict[str, Any], force: bool = False) -> None:
        self.done += 1
        self.samples += summary["samples"]
        self.audio_s += summary["audio_s"]
        self.reasons.update(summary.get("reject_reasons", {}))
        now = time.perf_counter()
        if force or now - self._last >= self.every_s or self.done == self.total:
            self._last = now
            el = now - self.t0
            rate = self.samples / el if el > 0 else 0.0
            eta = el / self.done * (self.total - self.done) if self.done else float("nan")
            rej = ", ".join(f"{k}={v}" for k, v in self.reasons.most_common(6)) or "none"
            log.info(
                "shards %d/%d | %d samples (%.1f/s) | %.3f h audio | rejects: %s | ETA %.0fs",
                self.done, self.total, self.samples, rate, self.audio_s / 3600, rej, eta,
            )


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "torchaudio", "numpy", "soundfile", "ray", "webdataset", "pyloudnorm", "polyclap"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _check_or_write_plan(out: Path, cfg: DataConfig, plan: dict[str, list[list[dict[str, Any]]]]) -> None:
    sig = build_signature(cfg)
    plan_summary = {
        split: [[r["corpus"] + ":" + r["source_id"] + f"@{r.get('start_s')}" for r in shard] for shard in shard_list]
        for split, shard_list in plan.items()
    }
    plan_sha = hashlib.sha256(json.dumps(plan_summary, sort_keys=True).encode()).hexdigest()[:16]
    p = out / PLAN_JSON
    if p.exists():
        old = json.loads(p.read_text())
        if old.get("signature") != sig:
            diff = [f"{k}: {old.get('signature', {}).get(k)} != {v}" for k, v in sig.items() if old.get("signature", {}).get(k) != v]
            raise BuildError(
                f"{out} holds shards built with a different configuration ({'; '.join(diff)}); "
                "refusing to mix them. Use a new --out directory."
            )
        if old.get("plan_sha256") != plan_sha:
            raise BuildError(
                f"{out} was planned from different inputs (plan {old.get('plan_sha256')} != {plan_sha}); "
                "the corpora changed since the first build. Use a new --out directory."
            )
        return
    atomic.atomic_write_json(p, {"signature": sig, "plan_sha256": plan_sha, "shards": {s: len(v) for s, v in plan.items()}})


def run_build(cfg: DataConfig, out: str | os.PathLike[str]) -> dict[str, Any]:
    """Scan, plan, execute and finalize a shard set under ``out``. Returns the build record."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    b = cfg.build
    if not b.corpora:
        raise BuildError("build.corpora is empty: nothing to build")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    scans = ray.get([scan_corpus.remote(c) for c in b.corpora])
    rows = [r for refs, _ in scans for r in refs]
    scan_rejects = [r for _, rj in scans for r in rj]
    timings["scan_s"] = time.perf_counter() - t
    log.info("scanned %d corpora: %d inputs, %d rejected by readers", len(b.corpora), len(rows), len(scan_rejects))
    if not rows:
        raise BuildError("the configured corpora yielded no usable inputs (see reader rejects above)")
    manifest_rows = [{k: v for k, v in r.items()} for r in rows]
    write_table(out / "manifest.parquet", sorted(manifest_rows, key=lambda r: (r["corpus"], r["source_id"], r.get("start_s") or 0.0)))

    t = time.perf_counter()
    plan = plan_shards(rows, cfg)
    _check_or_write_plan(out, cfg, plan)
    timings["plan_s"] = time.perf_counter() - t
    jobs = [(split, shards.shard_name(i), shard_rows) for split, lst in plan.items() for i, shard_rows in enumerate(lst)]
    todo = [j for j in jobs if not shard_is_done(out, j[0], j[1])]
    log.info("plan: %d shards (%s); %d already done, %d to build",
             len(jobs), ", ".join(f"{s}={len(v)}" for s, v in plan.items()), len(jobs) - len(todo), len(todo))

    t = time.perf_counter()
    eval_index = None
    if b.eval_corpora and b.dedup.decontaminate:
        eval_index = dedup.DedupIndex(near_threshold=b.dedup.near_threshold)
        cfg_json = DataConfig.view(cfg).model_dump_json()
        results = ray.get([fingerprint_eval_corpus.remote(cfg_json, c) for c in b.eval_corpora])
        n = 0
        for src, pcm, fp in sorted((x for res in results for x in res), key=lambda x: x[0]):
            eval_index.add(src, pcm, fp)
            n += 1
        log.info("decontamination: indexed %d segments of %d evaluation corpora", n, len(b.eval_corpora))
    timings["eval_index_s"] = time.perf_counter() - t

    t = time.perf_counter()
    cfg_json = DataConfig.view(cfg).model_dump_json()
    eval_ref = ray.put(eval_index)
    opts = {"num_cpus": b.shards.num_cpus_per_task, "max_retries": 2}
    max_inflight = b.shards.max_parallel_tasks or max(1, int(ray.available_resources().get("CPU", 1) / b.shards.num_cpus_per_task)) * 2
    progress = Progress(len(todo))
    pending: list[Any] = []
    summaries: list[dict[str, Any]] = []
    queue = list(todo)
    while queue or pending:
        while queue and len(pending) < max_inflight:
            split, name, shard_rows = queue.pop(0)
            pending.append(build_shard.options(**opts).remote(cfg_json, str(out), split, name, shard_rows, eval_ref))
        ready, pending = ray.wait(pending, num_returns=1)
        for r in ready:
            s = ray.get(r)
            summaries.append(s)
            progress.update(s)
    timings["execute_s"] = time.perf_counter() - t

    t = time.perf_counter()
    parts_all = []
    for split, name, _ in jobs:
        parts_all.append(json.loads(_part_path(out, split, name).read_text()))
    # Held-out splits first: a clip in both test and train is contamination, so the TRAIN copy
    # is the one excluded and the evaluation split stays intact.
    rank = {"test": 0, "val": 1, "train": 2}
    ordered = [p for (split, _, _), p in sorted(zip(jobs, parts_all), key=lambda jp: (rank[jp[0][0]], jp[0][1]))]
    excluded = resolve_cross_shard_duplicates(ordered, near=b.dedup.near, threshold=b.dedup.near_threshold) if (b.dedup.exact or b.dedup.near) else {}
    counts: dict[str, Any] = {}
    first_split = next(iter(plan))
    for split in plan:
        names = [n for s, n, _ in jobs if s == split]
        counts[split] = finalize_split(out, split, names, scan_rejects if split == first_split else [], excluded)
    timings["finalize_s"] = time.perf_counter() - t
    record = {
        "config": config_to_dict(cfg),
        "feature_fingerprint": features.feature_fingerprint(cfg.features),
        "feature_fields": features.fingerprint_fields(cfg.features),
        "signature": build_signature(cfg),
        "versions": _versions(),
        "counts": counts,
        "inputs": len(rows),
        "timings": timings,
        "shards_built_this_run": len(todo),
        "tasks": [
            {"split": split, "name": name, "samples": part["entry"]["samples"], "rejects": len(part["rejects"]), **part["stats"]}
            for (split, name, _), part in zip(jobs, parts_all)
        ],
    }
    atomic.atomic_write_json(out / shards.BUILD_JSON, record)
    return record
