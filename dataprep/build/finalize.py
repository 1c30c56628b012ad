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
from pathlib import Path
from typing import Any

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


def resolve_cross_shard_duplicates(
    parts: list[dict[str, Any]], near: bool, threshold: float
) -> dict[str, str]:
    """Keys to exclude -> the key they duplicate; the first in the given part order wins."""
    index = dedup.DedupIndex(near_threshold=threshold, near=near)
    excluded: dict[str, str] = {}
    for part in parts:
        for row in part["fingerprints"]:
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


def finalize_split(
    out: Path,
    split: str,
    parts: list[dict[str, Any]],
    scan_rejects: list[dict[str, str]],
    excluded: dict[str, str],
    curated: curation.Finalized | None = None,
) -> dict[str, Any]:
    """Write one split's tables, ``wids-index.json`` and (last) ``shards.json``; its counts.
    ``excluded``: cross-shard duplicates; ``curated``: the curation's percentile exclusions
    (a key excluded for both is listed once, as a duplicate) and its score rows."""
    cur = curated.excluded if curated is not None else {}
    drop = excluded.keys() | cur.keys()
    index_rows = [r for p in parts for r in p["index"] if r["key"] not in drop]
    split_excluded = sorted(k for p in parts for r in p["index"] if (k := r["key"]) in drop)
    reject_rows = [*scan_rejects, *(r for p in parts for r in p["rejects"])]
    reject_rows += _duplicate_rows([k for k in split_excluded if k in excluded], excluded)
    reject_rows += [
        row for k in split_excluded if k not in excluded and (row := cur.get(k)) is not None
    ]
    write_table(out / split / shards.INDEX, index_rows)
    write_table(out / split / shards.REJECTS, reject_rows, REJECT_SCHEMA)
    if curated is not None and split in curated.rows:
        rows = curated.rows[split]
        write_table(out / split / curation.SCORES, rows, curation.SCORES_SCHEMA)
    entries = [p["entry"] for p in parts]
    # wids (indexed random access) reads this index; urls are relative to the index file.
    wids = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": f"polyclap-{split}",
        "shardlist": [{"url": e["name"], "nsamples": e["samples"]} for e in entries],
    }
    atomic.atomic_write_json(out / split / "wids-index.json", wids)
    total = sum(e["samples"] for e in entries)
    meta = {"split": split, "shards": entries, "samples": total, "exclude": split_excluded}
    atomic.atomic_write_json(out / split / shards.SHARDS_JSON, meta)
    return {
        "samples": total - len(split_excluded),
        # rejected inputs and rejected generated texts (LLM...) apart: a text reject keeps
        # its sample
        **reject_counts(reject_rows),
    }


def finalize_build(
    out: Path,
    plan: Plan,
    scan_rejects: list[dict[str, str]],
    dedup_cfg: DedupConfig,
    curation_cfg: CurationConfig | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Curation's percentile cut and cross-shard dedup over every part, then each split's
    files: ``(counts, parts)``. Keys the curation excludes take no part in dedup, so a kept
    copy of a clip is never excluded as the duplicate of a curated-out one."""
    parts = [read_part(out, t) for t in plan.shards]
    curated = curation.finalize_scores(parts, curation_cfg) if curation_cfg else None
    gone = curated.excluded if curated is not None else {}
    ordered = [
        {**p, "fingerprints": [r for r in p["fingerprints"] if r["key"] not in gone]}
        for t, p in sorted(
            zip(plan.shards, parts), key=lambda tp: (_SPLIT_RANK[tp[0].split], tp[0].name)
        )
    ]
    excluded: dict[str, str] = {}
    if dedup_cfg.exact or dedup_cfg.near:
        excluded = resolve_cross_shard_duplicates(
            ordered, near=dedup_cfg.near, threshold=dedup_cfg.near_threshold
        )
    counts: dict[str, Any] = {}
    splits = plan.splits()
    for split in splits:
        split_parts = [p for t, p in zip(plan.shards, parts) if t.split == split]
        # Reader rejects belong to no split; they are listed once, with the first split's.
        first = scan_rejects if split == splits[0] else []
        counts[split] = finalize_split(out, split, split_parts, first, excluded, curated)
        if curated is not None and split in curation_cfg.splits:
            counts[split]["clap_score_cuts"] = curated.cuts
    return counts, parts


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
