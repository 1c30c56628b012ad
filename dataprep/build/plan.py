"""The shard planner (pure): manifest rows -> splits -> byte-balanced shards as row ranges.

Deterministic: rows are ordered by (corpus, source_id, start_s), assigned to a split
(:func:`dataprep.process.assign_split`), interleaved across (corpus, language) strata in
proportion to their sizes (:func:`interleave`, so every shard holds the data's mix rather than
one corpus), and laid out split by split in :data:`SPLITS` order, so every shard is one
contiguous range of the manifest. ``plan.json`` records the build signature
and a hash of the plan: a rerun into the same directory continues only if both match.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataprep.core import atomic, features, shards, storage
from dataprep.core.config import ConfigError, DataConfig, check_out
from dataprep.core.configfile import config_to_dict
from dataprep.core.sample import SPLITS, SampleRef
from dataprep.curation import model_digest
from dataprep.process import assign_split

PLAN_JSON = "plan.json"
EST_JSON_BYTES = 2048  # the json member (metadata + texts) of one sample, roughly
FLAC_BYTES_PER_SAMPLE = 1.2  # flac of 16-bit PCM, bytes per audio sample


class BuildError(RuntimeError):
    """A problem that stops the build (bad config, mixing outputs), with a user-facing message."""


def check_inputs(cfg: DataConfig, out: str | None = None) -> Path | str:
    """The checks a build (or a repair) makes before any work or Ray: reader names and options,
    the output (``out`` or ``build.out``: a local path, or an s3/gs URI whose bucket answers with
    the credentials found), every local corpus root present. Returns the output location;
    raises :class:`ConfigError` naming every problem."""
    from dataprep.corpora import validate_corpora

    validate_corpora(cfg)
    try:
        out_dir = storage.location(check_out(out or cfg.build.out))
        if storage.is_remote(out_dir):  # endpoint and credentials, before Ray starts
            storage.listing(out_dir)
    except (ValueError, storage.StorageError) as e:
        raise ConfigError(str(e)) from None
    corpora = (*cfg.build.corpora, *cfg.build.eval_corpora)
    missing = [c for c in corpora if "://" not in c.root and not Path(c.root).exists()]
    if missing:
        raise ConfigError(
            "; ".join(f"corpus {c.name!r}: root path does not exist: {c.root}" for c in missing)
        )
    return out_dir


@dataclass(frozen=True)
class ShardTask:
    """One shard to build: manifest rows ``[start, stop)`` become ``<split>/<name>``."""

    split: str
    name: str
    start: int
    stop: int


@dataclass(frozen=True)
class Plan:
    rows: list[dict[str, Any]]  # manifest rows in plan order (each has ``build_split``)
    shards: list[ShardTask]  # in plan order: split by split, shard-000000 first

    def splits(self) -> list[str]:
        """The non-empty splits, in plan order."""
        return list(dict.fromkeys(t.split for t in self.shards))

    def rows_of(self, task: ShardTask) -> list[dict[str, Any]]:
        return self.rows[task.start : task.stop]


def _sort_key(row: dict[str, Any]) -> tuple[str, str, float]:
    return row["corpus"], row["source_id"], row.get("start_s") or 0.0


def _placed(name: str, rows: list[dict[str, Any]]) -> Iterator[tuple[float, str, int, Any]]:
    n = len(rows)
    return (((i + 0.5) / n, name, i, row) for i, row in enumerate(rows))


def _spread(groups: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The groups' rows merged so that every prefix holds each group in proportion: the
    ``i``-th of a group's ``n`` rows goes to position ``(i + 0.5) / n`` (ties by group name).
    Each group's positions already ascend: a streaming k-way merge, not a sort of every row."""
    merged = heapq.merge(*(_placed(name, rows) for name, rows in groups.items()),
                         key=lambda p: p[:3])  # fmt: skip
    return [p[3] for p in merged]


def interleave(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (already in :func:`_sort_key` order) mixed across corpora and languages.

    Languages are spread within each corpus, then corpora among each other, so every prefix
    (so every shard cut from it) holds each corpus in proportion to its size to within a row,
    and each corpus's languages likewise; the order inside one (corpus, lang) is kept. A pure
    function of the rows' content.
    """
    by_corpus: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        by_corpus.setdefault(row["corpus"], {}).setdefault(row.get("lang") or "", []).append(row)
    return _spread({corpus: _spread(langs) for corpus, langs in by_corpus.items()})


def _bytes_per_audio_s(cfg: DataConfig) -> float:
    f = cfg.features
    per_s = f.n_mels * 2 * f.sample_rate_hz / f.hop_length
    if cfg.build.audio.keep_audio:
        per_s += f.sample_rate_hz * FLAC_BYTES_PER_SAMPLE
    return per_s


def _cut(n_rows: int, est_bytes: list[float], target: float, max_samples: int) -> list[int]:
    """Offsets where a new shard starts (the first is 0), cutting by estimated bytes."""
    starts: list[int] = []
    cur_bytes, cur_n = 0.0, 0
    for i in range(n_rows):
        if cur_n and (cur_bytes + est_bytes[i] > target or cur_n >= max_samples):
            cur_bytes, cur_n = 0.0, 0
        if cur_n == 0:
            starts.append(i)
        cur_bytes += est_bytes[i]
        cur_n += 1
    return starts


def plan_shards(rows: list[dict[str, Any]], cfg: DataConfig) -> Plan:
    """Assign rows to splits (each row gains ``build_split``) and cut each split into shards
    by estimated bytes."""
    sc, b = cfg.build.splits, cfg.build
    by_split: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for row in sorted(rows, key=_sort_key):
        # what assign_split reads, without parsing each row's ``extra`` JSON (ref_from_row)
        ref = SampleRef(row["corpus"], row["source_id"], "", speaker=row.get("speaker"),
                        split=row.get("split"))  # fmt: skip
        split = assign_split(ref, sc.val_fraction, sc.test_fraction, sc.salt)
        row["build_split"] = split  # in place: a copy of every row doubled the driver's memory
        by_split[split].append(row)
    views = 1 + b.augment.audio_views
    bytes_per_s = _bytes_per_audio_s(cfg)
    ordered: list[dict[str, Any]] = []
    tasks: list[ShardTask] = []
    for split, items in by_split.items():
        if not items:
            continue
        items = interleave(items)
        est = [
            views
            * (
                min(r["est_duration_s"], b.filters.max_source_duration_s) * bytes_per_s
                + EST_JSON_BYTES
            )
            for r in items
        ]
        starts = _cut(len(items), est, b.shards.target_mb * 1e6, b.shards.max_samples_per_shard)
        base = len(ordered)
        for i, (lo, hi) in enumerate(zip(starts, [*starts[1:], len(items)])):
            tasks.append(ShardTask(split, shards.shard_name(i), base + lo, base + hi))
        ordered.extend(items)
    return Plan(rows=ordered, shards=tasks)


def build_signature(cfg: DataConfig) -> dict[str, Any]:
    """What must match for a rerun to continue writing into an existing output directory."""
    b = config_to_dict(cfg.build)
    b.pop("out", None)
    b.pop("scratch", None)  # where a remote out is staged: not part of what is built
    b["shards"].pop("num_cpus_per_task", None)
    b["shards"].pop("max_parallel_tasks", None)
    cur = b.pop("curation")
    sig = {"feature_fingerprint": features.feature_fingerprint(cfg.features)}
    if cfg.build.curation:  # off: the signature of a build made before curation existed
        for k in ("batch_size", "device", "num_actors", "num_cpus"):  # how, not what
            cur.pop(k)
        cur["model_digest"] = model_digest(cur["model"])
        b["curation"] = cur
    blob = json.dumps(b, sort_keys=True)
    sig["build_config_sha256"] = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return sig


def plan_sha256(plan: Plan) -> str:
    """Hash of which inputs went to which shard (the same inputs give the same hash): the
    sha256 of ``json.dumps({split: [[input id, ...] per shard]}, sort_keys=True)``, streamed
    shard by shard instead of built as one string (10M inputs: ~1 GB of ids in the driver)."""
    h = hashlib.sha256()
    by_split: dict[str, list[ShardTask]] = {}
    for task in plan.shards:
        by_split.setdefault(task.split, []).append(task)
    for i, split in enumerate(sorted(by_split)):
        h.update(f"{', ' if i else '{'}{json.dumps(split)}: [".encode())
        for j, task in enumerate(by_split[split]):
            ids = (json.dumps(f"{r['corpus']}:{r['source_id']}@{r.get('start_s')}")
                   for r in plan.rows_of(task))  # fmt: skip
            h.update(f"{', ' if j else ''}[{', '.join(ids)}]".encode())
        h.update(b"]")
    h.update(b"}" if by_split else b"{}")
    return h.hexdigest()[:16]


def check_signature(out: Path, cfg: DataConfig) -> dict[str, Any] | None:
    """Refuse ``out`` when it holds a build made with another config; reads only. Runs before
    the build writes (or deletes) anything there. Returns the existing plan record, if any."""
    p = out / PLAN_JSON
    if not p.exists():
        return None
    sig = build_signature(cfg)
    old = json.loads(p.read_text())
    old_sig = old.get("signature", {})
    if old_sig != sig:
        diff = [f"{k}: {old_sig.get(k)} != {v}" for k, v in sig.items() if old_sig.get(k) != v]
        raise BuildError(
            f"{out} holds shards built with a different configuration ({'; '.join(diff)}); "
            "refusing to mix them (nothing was written). Use a new --out directory."
        )
    return old


def check_or_write_plan(out: Path, cfg: DataConfig, plan: Plan) -> None:
    """Refuse to continue a build made with another config or from other inputs."""
    sha = plan_sha256(plan)
    old = check_signature(out, cfg)
    if old is None:
        counts = {s: sum(t.split == s for t in plan.shards) for s in plan.splits()}
        record = {"signature": build_signature(cfg), "plan_sha256": sha, "shards": counts}
        atomic.atomic_write_json(out / PLAN_JSON, record)
        return
    if old.get("plan_sha256") != sha:
        raise BuildError(
            f"{out} was planned from different inputs (plan {old.get('plan_sha256')} != {sha}); "
            "the corpora changed since the first build. Use a new --out directory."
        )
