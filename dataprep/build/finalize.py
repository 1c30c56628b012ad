"""Resume bookkeeping and finalization: part records -> per-split tables and ``shards.json``.

Resumability: a rerun skips a shard whose tar exists and matches its part record's size and
sha256 (:func:`shard_is_done`), and redoes the rest. ``index.parquet``, ``rejects.parquet`` and
``wids-index.json`` are assembled from the parts at the end, ``shards.json`` last, as the
completion marker of the split. ``README.md`` is a dataset card declaring the sample schema
for independent readers (Hugging Face ``datasets``).
"""

from __future__ import annotations

import importlib.metadata as md
import json
from collections.abc import Callable, Container, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from dataprep import curation, dedup
from dataprep.build.manifest import REJECT_SCHEMA, write_table
from dataprep.build.plan import Plan, ShardTask
from dataprep.core import atomic, shards
from dataprep.core.config import CurationConfig, DedupConfig
from dataprep.core.sample import hf_features, reject_counts

PARTS = ".parts"
DATASET_CARD = "README.md"
# Held-out splits first: a clip in both test and train is contamination, so the TRAIN copy
# is the one excluded and the evaluation split stays intact.
_SPLIT_RANK = {"test": 0, "val": 1, "train": 2}
TABLE_ROW_GROUP = 16384  # index.parquet rows per row group (written as the parts are read)
# The columns of :func:`dataprep.build.shard.index_row`, sorted as the part records (JSON with
# sorted keys) always gave them; explicit, so a row group whose column is all None keeps its type.
INDEX_SCHEMA = pa.schema(
    (c, {"duration": pa.float64(), "n_texts": pa.int64(), "frames": pa.int64()}.get(c, pa.string()))
    for c in sorted(("key", "shard", "split", "corpus", "lang", "duration", "text", "n_texts",
                     "labels", "speaker", "group", "audio_sha1", "frames"))
)  # fmt: skip
_VERSIONED = ("torch", "torchaudio", "numpy", "soundfile", "ray", "webdataset", "pyloudnorm",
              "polyclap")  # fmt: skip


def part_path(out: Path, split: str, name: str) -> Path:
    return out / split / PARTS / (name.removesuffix(".tar") + ".json")


def remove_leftovers(out: Path) -> int:
    """Delete the temp files a killed writer left (``.<name>.*.tmp``) in the build's folders;
    returns how many. Only one build writes into ``out`` at a time (``plan.json`` guards it)."""
    folders = [out, *(d for d in out.iterdir() if d.is_dir())]
    folders += [d / PARTS for d in folders[1:] if (d / PARTS).is_dir()]
    n = 0
    for folder in folders:
        for tmp in folder.glob(f".*{atomic.TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            n += 1
    return n


def read_part(out: Path, task: ShardTask) -> dict[str, Any]:
    return json.loads(part_path(out, task.split, task.name).read_text())


def shard_is_done(out: Path, split: str, name: str) -> bool:
    """The tar exists and matches the size and sha256 its part record holds."""
    tar = out / split / name
    part = part_path(out, split, name)
    if not (tar.is_file() and part.is_file()):
        return False
    try:
        entry = json.loads(part.read_text())["entry"]
    except (OSError, ValueError, KeyError):
        return False
    return entry.get("bytes") == tar.stat().st_size and entry.get("sha256") == atomic.sha256_file(
        tar
    )


def _feed_duplicates(
    index: dedup.DedupIndex | None, part: dict[str, Any], near: bool, skip: Container[str]
) -> dict[str, str]:
    """Add one part's fingerprints to the cross-shard index: its keys that duplicate an earlier
    item -> that item's key. Parts are fed in :data:`_SPLIT_RANK` order, shards by name: the
    first copy wins, and a key's fate is final once its part is fed (only later items are
    excluded). Keys in ``skip`` (curated out) take no part."""
    excluded: dict[str, str] = {}
    if index is None:
        return excluded
    for row in part["fingerprints"]:
        if row["key"] in skip:
            continue
        fp = dedup.fingerprint_from_hex(row["fp"]) if near else None
        dup = index.add(row["key"], row["pcm"], fp)
        if dup is not None:
            excluded[row["key"]] = dup
    return excluded


def _duplicate_rows(keys: list[str], excluded: dict[str, str]) -> list[dict[str, str]]:
    return [
        {
            "source": k,
            "corpus": k.rsplit("-", 1)[0],
            "stage": "dedup",
            "reason": "duplicate",
            "detail": f"same audio as {excluded[k]} (found across shards; key excluded)",
        }
        for k in keys
    ]


@contextmanager
def _table_writer(path: Path, schema: pa.Schema) -> Iterator[Callable[[list[dict]], None]]:
    """``add(rows)`` appends rows to the parquet at ``path`` (written atomically), buffered into
    row groups of :data:`TABLE_ROW_GROUP`: the split's rows are never all in memory at once."""
    buf: list[dict[str, Any]] = []
    with atomic.atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:

        def flush() -> None:
            writer.write_table(pa.Table.from_pylist(buf, schema=schema))
            buf.clear()

        def add(rows: list[dict[str, Any]]) -> None:
            buf.extend(rows)
            if len(buf) >= TABLE_ROW_GROUP:
                flush()

        yield add
        if buf:
            flush()


def _split_meta(out: Path, split: str, entries: list[dict[str, Any]], excluded: list[str]) -> int:
    """``wids-index.json``, then (last) ``shards.json``; the samples the tars hold."""
    # wids (indexed random access) reads this index; urls are relative to the index file.
    wids = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": f"polyclap-{split}",
        "shardlist": [{"url": e["name"], "nsamples": e["samples"]} for e in entries],
    }
    atomic.atomic_write_json(out / split / "wids-index.json", wids)
    total = sum(e["samples"] for e in entries)
    meta = {"split": split, "shards": entries, "samples": total, "exclude": excluded}
    atomic.atomic_write_json(out / split / shards.SHARDS_JSON, meta)
    return total


def finalize_split(
    out: Path,
    split: str,
    tasks: list[ShardTask],
    scan_rejects: list[dict[str, str]],
    index: dedup.DedupIndex | None,
    near: bool = False,
    curated: curation.Finalized | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One split's tables and (last) ``shards.json``, one part record in memory at a time, each
    fed to the cross-shard dedup ``index`` first. ``curated``: the curation's percentile
    exclusions (a key excluded for both is listed once, as a duplicate) and its score rows.
    Returns ``(counts, summaries)``, a summary (entry, stats, reject count) per task."""
    cur = curated.excluded if curated is not None else {}
    excluded: dict[str, str] = {}
    dropped: list[str] = []
    reject_rows = list(scan_rejects)
    entries, summaries = [], []
    with _table_writer(out / split / shards.INDEX, INDEX_SCHEMA) as add_index:
        for task in tasks:
            part = read_part(out, task)
            mine = _feed_duplicates(index, part, near, cur)
            excluded.update(mine)
            keep = [r for r in part["index"] if r["key"] not in mine and r["key"] not in cur]
            dropped += [r["key"] for r in part["index"] if r["key"] in mine or r["key"] in cur]
            add_index(keep)
            reject_rows += part["rejects"]
            entries.append(part["entry"])
            n_rej = len(part["rejects"])
            summaries.append({"entry": part["entry"], "stats": part["stats"], "rejects": n_rej})
    split_excluded = sorted(dropped)
    reject_rows += _duplicate_rows([k for k in split_excluded if k in excluded], excluded)
    reject_rows += [
        row for k in split_excluded if k not in excluded and (row := cur.get(k)) is not None
    ]
    write_table(out / split / shards.REJECTS, reject_rows, REJECT_SCHEMA)
    if curated is not None and split in curated.rows:
        rows = curated.rows[split]
        write_table(out / split / curation.SCORES, rows, curation.SCORES_SCHEMA)
    total = _split_meta(out, split, entries, split_excluded)
    counts = {
        "samples": total - len(split_excluded),
        # rejected inputs and rejected generated texts (LLM...) apart: a text reject keeps
        # its sample
        **reject_counts(reject_rows),
    }
    return counts, summaries


def _curate(out: Path, plan: Plan, cfg: CurationConfig) -> curation.Finalized:
    """The percentile decision: a first pass over the part records, keeping of each only what
    :func:`curation.finalize_scores` reads (its score rows, its index keys and corpora)."""
    light = []
    for t in plan.shards:
        p = read_part(out, t)
        index = [{"key": r["key"], "corpus": r["corpus"]} for r in p["index"]]
        light.append({"scores": p.get("scores", []), "index": index})
    return curation.finalize_scores(light, cfg)


def finalize_build(
    out: Path,
    plan: Plan,
    scan_rejects: list[dict[str, str]],
    dedup_cfg: DedupConfig,
    curation_cfg: CurationConfig | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Curation's percentile cut, then cross-shard dedup and each split's files, one part
    record in memory at a time: ``(counts per split, a summary per shard in plan order: entry,
    stats, reject count)``. Keys the curation excludes take no part in dedup, so a kept copy of
    a clip is never excluded as the duplicate of a curated-out one."""
    curated = _curate(out, plan, curation_cfg) if curation_cfg else None
    index = None
    if dedup_cfg.exact or dedup_cfg.near:
        index = dedup.DedupIndex(near_threshold=dedup_cfg.near_threshold, near=dedup_cfg.near)
    splits = plan.splits()
    counts: dict[str, Any] = {}
    summaries: dict[tuple[str, str], dict[str, Any]] = {}
    for split in sorted(splits, key=_SPLIT_RANK.__getitem__):  # held-out splits feed dedup first
        tasks = sorted((t for t in plan.shards if t.split == split), key=lambda t: t.name)
        # Reader rejects belong to no split; they are listed once, with the first split's.
        first = scan_rejects if split == splits[0] else []
        counts[split], summ = finalize_split(
            out, split, tasks, first, index, dedup_cfg.near, curated
        )
        if curated is not None and split in curation_cfg.splits:
            counts[split]["clap_score_cuts"] = curated.cuts
        summaries.update(((split, t.name), x) for t, x in zip(tasks, summ))
    return {s: counts[s] for s in splits}, [summaries[t.split, t.name] for t in plan.shards]


def write_dataset_card(out: Path, splits: list[str], with_audio: bool) -> Path:
    """``<out>/README.md``: a Hugging Face dataset card whose YAML declares the splits' tars and
    the sample schema (:func:`dataprep.core.sample.hf_features`), so ``datasets.load_dataset(
    "<out>")`` reads the shard set with one declared schema instead of guessing types from the
    first samples (an empty ``labels`` list has no element type to guess)."""
    card = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": f"{s}/shard-*.tar"} for s in splits],
            }
        ],
        "dataset_info": {"features": hf_features(with_audio)},
    }
    text = (
        "---\n" + yaml.safe_dump(card, sort_keys=False, allow_unicode=True) + "---\n\n"
        "# polyclap shard set\n\nWebDataset tars written by `pipelines/build_shards.py`; "
        "`build.json` holds the config, the corpus roots and the counts.\n"
    )
    path = out / DATASET_CARD
    atomic.atomic_write_bytes(path, text.encode())
    return path


def versions() -> dict[str, str]:
    """Installed versions of the packages that decide the shard bytes."""
    out = {}
    for pkg in _VERSIONED:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
