"""The pure parts of the build: manifest rows, the shard planner, resume checks (no Ray)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from dataprep.build import manifest
from dataprep.build.finalize import part_path, remove_leftovers, shard_is_done
from dataprep.build.plan import BuildError, check_or_write_plan, plan_shards
from dataprep.core import atomic, shards
from dataprep.core.config import CorpusConfig, DataConfig
from dataprep.core.sample import SPLITS


@pytest.fixture(scope="module")
def scanned(corpora_root: Path) -> list[dict]:
    rows: list[dict] = []
    for name, reader in (("esc50_mini", "esc50"), ("commonvoice_mini", "commonvoice")):
        refs, _ = manifest.scan_corpus(
            CorpusConfig(name=name, reader=reader, root=str(corpora_root / name))
        )
        assert refs and all(r["est_duration_s"] > 0 for r in refs)
        rows += refs
    return rows


def cfg(**build) -> DataConfig:
    return DataConfig.model_validate({"build": build})


def test_plan_cuts_contiguous_ranges_split_by_split(scanned: list[dict]) -> None:
    c = cfg(shards={"target_mb": 0.5}, splits={"val_fraction": 0.3, "test_fraction": 0.1})
    plan = plan_shards(list(reversed(scanned)), c)
    assert len(plan.rows) == len(scanned)
    # Every row in exactly one shard; shards tile the manifest without gaps, split by split.
    assert plan.shards[0].start == 0 and plan.shards[-1].stop == len(plan.rows)
    for a, b in zip(plan.shards, plan.shards[1:]):
        assert a.stop == b.start and a.start < a.stop
    assert plan.splits() == [s for s in SPLITS if s in plan.splits()] and len(plan.splits()) > 1
    for task in plan.shards:
        assert {r["build_split"] for r in plan.rows_of(task)} == {task.split}
    names = [t.name for t in plan.shards if t.split == "train"]
    assert names == [shards.shard_name(i) for i in range(len(names))] and len(names) > 1
    # Deterministic whatever the scan order.
    again = plan_shards(scanned, c)
    assert again.shards == plan.shards and again.rows == plan.rows


def test_shards_mix_corpora_and_languages_in_proportion(scanned: list[dict]) -> None:
    # issue 17: the planner interleaves (corpus, lang) strata; shards used to be one corpus each
    plan = plan_shards(scanned, cfg(shards={"max_samples_per_shard": 8}))
    train = [t for t in plan.shards if t.split == "train"]
    rows = [r for t in train for r in plan.rows_of(t)]
    total = Counter(r["corpus"] for r in rows)
    assert len(total) == 2 and len(train) > 3
    seen: Counter[str] = Counter()
    for task in train:
        seen.update(r["corpus"] for r in plan.rows_of(task))
        done = sum(seen.values())
        for corpus, n in total.items():  # every prefix of shards holds the data's proportion
            assert abs(seen[corpus] - done * n / len(rows)) <= 1.5, (task.name, corpus)
    langs = Counter(r["lang"] for r in rows if r["corpus"] == "commonvoice_mini")
    first = {r["lang"] for t in train[: len(train) // 2] for r in plan.rows_of(t)}
    assert len(langs) > 3 and set(langs) <= first  # every language already in the first half
    # the order inside one stratum stays the sorted (source, start) order
    for stratum in {(r["corpus"], r["lang"]) for r in rows}:
        mine = [(r["source_id"], r.get("start_s") or 0.0) for r in rows
                if (r["corpus"], r["lang"]) == stratum]  # fmt: skip
        assert mine == sorted(mine)


def test_max_samples_per_shard_bounds_every_shard(scanned: list[dict]) -> None:
    plan = plan_shards(scanned, cfg(shards={"max_samples_per_shard": 7}))
    assert all(t.stop - t.start <= 7 for t in plan.shards)
    assert sum(t.stop - t.start for t in plan.shards) == len(scanned)


def test_manifest_range_round_trips_refs(scanned: list[dict], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(manifest, "MANIFEST_ROW_GROUP", 5)  # ranges straddle row groups
    plan = plan_shards(scanned, cfg(shards={"max_samples_per_shard": 7}))
    path = manifest.write_manifest(tmp_path, plan.rows)
    for task in plan.shards:
        got = manifest.read_manifest_range(path, task.start, task.stop)
        want = plan.rows_of(task)
        assert [manifest.ref_from_row(r) for r in got] == [manifest.ref_from_row(r) for r in want]
    assert manifest.read_manifest_range(path, 3, 3) == []
    with pytest.raises(ValueError, match="outside"):
        manifest.read_manifest_range(path, 0, len(plan.rows) + 1)


def test_rerun_with_other_config_or_inputs_is_refused(scanned: list[dict], tmp_path: Path) -> None:
    c = cfg()
    check_or_write_plan(tmp_path, c, plan_shards(scanned, c))
    check_or_write_plan(tmp_path, c, plan_shards(scanned, c))  # same: continue
    other = cfg(filters={"min_duration_s": 1.0})
    with pytest.raises(BuildError, match="refusing to mix"):
        check_or_write_plan(tmp_path, other, plan_shards(scanned, other))
    with pytest.raises(BuildError, match="different inputs"):
        check_or_write_plan(tmp_path, c, plan_shards(scanned[1:], c))


def test_shard_is_done_only_with_a_matching_part(tmp_path: Path) -> None:
    tar = tmp_path / "train" / "shard-000000.tar"
    tar.parent.mkdir()
    tar.write_bytes(b"x" * 10)
    assert not shard_is_done(tmp_path, "train", tar.name)  # no part record yet
    entry = {"bytes": 10, "sha256": atomic.sha256_file(tar)}
    atomic.atomic_write_json(part_path(tmp_path, "train", tar.name), {"entry": entry})
    assert shard_is_done(tmp_path, "train", tar.name)
    tar.write_bytes(b"y" * 10)  # same size, other bytes
    assert not shard_is_done(tmp_path, "train", tar.name)


def test_only_the_executor_imports_ray() -> None:
    mods = ["manifest", "plan", "shard", "finalize", "progress"]
    code = (
        "import sys\n"
        + "".join(f"import dataprep.build.{m}\n" for m in mods)
        + "assert 'ray' not in sys.modules, 'a pure build module imported ray'\n"
        + "import dataprep.build.executor\nassert 'ray' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_temp_files_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    keep = [tmp_path / "plan.json", tmp_path / "train" / "shard-000000.tar"]
    junk = [
        tmp_path / ".manifest.parquet.x1.tmp",
        tmp_path / "train" / ".shard-000001.tar.ab12.tmp",
        tmp_path / "train" / ".parts" / ".shard-000001.json.cd34.tmp",
    ]
    for f in keep + junk:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    assert remove_leftovers(tmp_path) == len(junk)
    assert all(f.exists() for f in keep) and not any(f.exists() for f in junk)


def test_plan_sha256_streams_the_same_hash_as_the_json_of_every_id(scanned: list[dict]) -> None:
    # issue 20: the hash is streamed shard by shard; it must equal the one plan.json files of
    # earlier builds hold (a json.dumps of every input id per shard), or their resume would stop
    import hashlib
    import json

    from dataprep.build.plan import Plan, plan_sha256

    c = cfg(shards={"max_samples_per_shard": 7}, splits={"val_fraction": 0.2, "test_fraction": 0.2})
    plan = plan_shards(scanned, c)
    summary: dict[str, list[list[str]]] = {}
    for task in plan.shards:
        ids = [f"{r['corpus']}:{r['source_id']}@{r.get('start_s')}" for r in plan.rows_of(task)]
        summary.setdefault(task.split, []).append(ids)
    assert len(summary) == 3
    want = hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()[:16]
    assert plan_sha256(plan) == want
    empty = hashlib.sha256(json.dumps({}).encode()).hexdigest()[:16]
    assert plan_sha256(Plan(rows=[], shards=[])) == empty


def test_scale_simulation_runs_the_production_bookkeeping_at_a_tiny_size(tmp_path: Path) -> None:
    # keeps bench/scale_sim.py from rotting: the same stages at 2,000 inputs (no timing asserted)
    out = tmp_path / "sim.json"
    cmd = [sys.executable, "bench/scale_sim.py", "--sizes", "2000", "--per-shard", "50",
           "--json", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    import json

    (res,) = json.loads(out.read_text())
    assert res["inputs"] == 2000 and res["shards"] >= 40
    assert sum(c["samples"] for c in res["counts"].values()) < 2000  # exact duplicates excluded
    assert set(res["stages"]) == {
        "scan", "plan", "resume", "finalize", "epoch", "weighted", "report", "report_jobs"
    }  # fmt: skip
