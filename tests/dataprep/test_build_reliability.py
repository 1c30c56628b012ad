"""Issue 19, build side: refused reruns write nothing, killed writers leave nothing behind,
shards do not depend on where the checkout lives, and independent readers (Hugging Face
``datasets``) read a shard set with one schema.

Everything runs the real entry point (``pipelines/build_shards.py``, embedded local Ray) on the
bundled corpora. The two "clones" are copies of this checkout's code, configs and fixtures in
two different temp folders, each building with its own code from its own folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dataprep.core import shards, tario
from dataprep.core.sample import META, META_SCHEMA, canonical_meta

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/test_small.yaml"
CLONE_PARTS = ("dataprep", "model", "pipelines", "configs", "pyproject.toml")
CORPORA = ("esc50_mini", "audiocaps_mini", "commonvoice_mini")  # what test_small reads


def _clone(dst: Path) -> Path:
    """A checkout at ``dst``: the code, configs and the fixture corpora test_small reads."""
    for part in CLONE_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dst / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst / part)
    for corpus in CORPORA:
        src = REPO / "tests" / "fixtures" / "corpora" / corpus
        shutil.copytree(src, dst / "tests" / "fixtures" / "corpora" / corpus)
    return dst


def build(
    checkout: Path, out: Path, env: dict[str, str], *overrides: str
) -> subprocess.CompletedProcess[str]:
    env = {**env, "PYTHONPATH": str(checkout)}  # the clone's own code, not this checkout's
    cmd = [sys.executable, "pipelines/build_shards.py", "--config", CONFIG, "--out", str(out),
           "--num-cpus", "2", *overrides]  # fmt: skip
    return subprocess.run(
        cmd, check=False, cwd=checkout, env=env, capture_output=True, text=True, timeout=600
    )


def tree(out: Path) -> dict[str, str]:
    """sha256 of every file under ``out`` (hidden temp files included)."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def clones(tmp_path_factory: pytest.TempPathFactory, subprocess_env: dict[str, str]):  # type: ignore[no-untyped-def]
    """The same config built from two checkouts at different paths (out inside each)."""
    outs = []
    for name in ("first-checkout", "somewhere/else/entirely"):
        checkout = _clone(tmp_path_factory.mktemp("clone") / name)
        out = checkout / "outputs" / "shards"
        proc = build(checkout, out, subprocess_env)
        assert proc.returncode == 0, proc.stderr[-4000:]
        outs.append(out)
    return outs


# ------------------------------------------ defect 5: shards independent of the checkout path


def _tars(out: Path) -> dict[str, str]:
    return {k: v for k, v in tree(out).items() if k.endswith(".tar")}


def test_shards_are_byte_identical_across_checkout_paths(clones: list[Path]) -> None:
    a, b = clones
    assert _tars(a) and _tars(a) == _tars(b)
    for split in ("train", "val", "test"):
        if (a / split).is_dir():
            ja = json.loads((a / split / shards.SHARDS_JSON).read_text())
            jb = json.loads((b / split / shards.SHARDS_JSON).read_text())
            assert ja == jb
    record = json.loads((a / shards.BUILD_JSON).read_text())
    roots = record["corpus_roots"]
    for tar in sorted(a.glob("*/*.tar")):
        for s in tario.iter_shard(tar):
            m = s[META]
            uri = m["source_uri"]
            assert not uri.startswith("/") and str(a.parent.parent) not in uri, uri
            # the recorded root + the relative uri is the file that was read
            assert (Path(roots[m["corpus"]]) / uri).is_file(), (roots[m["corpus"]], uri)


# -------------------------------------- defect 8: one schema, read by Hugging Face datasets


def test_every_sample_json_has_the_same_keys_and_types(clones: list[Path]) -> None:
    n = 0
    for tar in sorted(clones[0].glob("*/*.tar")):
        for s in tario.iter_shard(tar):
            m = s[META]
            assert sorted(m) == sorted(META_SCHEMA), set(m) ^ set(META_SCHEMA)
            assert canonical_meta(m) == m  # nothing missing, nothing null, nothing mistyped
            n += 1
    assert n > 0


def test_canonical_update_types_only_the_changed_fields() -> None:
    """An audio view's json: its clip's canonical json with four fields changed equals the
    canonical json of the merged fields; unknown keys are refused as by canonical_meta."""
    from dataprep.core.sample import canonical_update

    clip = canonical_meta(
        {"id": "c-1", "corpus": "c", "lang": None, "duration": 2, "labels": ["dog"],
         "texts": [{"text": "a dog", "lang": None, "kind": "original", "provenance": None}]}
    )  # fmt: skip
    changes = {"id": "c-1v1", "augment": [{"transform": "gain", "gain_db": -3.0}],
               "audio_sha1": "ab" * 20, "audio_fp": None}  # fmt: skip
    view = canonical_update(clip, changes)
    assert view == canonical_meta({**clip, **changes})
    assert view["audio_fp"] == "" and view["texts"] == clip["texts"] and clip["id"] == "c-1"
    with pytest.raises(ValueError, match="outside META_SCHEMA"):
        canonical_update(clip, {"colour": "red"})


def test_hugging_face_datasets_reads_the_shard_set(clones: list[Path], tmp_path: Path) -> None:
    import datasets

    out = clones[0]
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf"))
    for split in ("train", "val", "test"):
        if not (out / split).is_dir():
            continue
        meta = json.loads((out / split / shards.SHARDS_JSON).read_text())
        assert len(ds[split]) == meta["samples"] == sum(e["samples"] for e in meta["shards"])
        row = ds[split][0]
        assert row["json"]["id"] == row["__key__"] and row["txt"] == row["json"]["texts"][0]["text"]
        assert isinstance(row["json"]["labels"], list) and isinstance(row["json"]["stats"], dict)
    # one shard on its own (a reader picking tars) reads with the card's declared schema. Given
    # data_files, datasets ignores the card and infers a schema from the tar's first 5 samples,
    # which fails once they mix corpora whose free-form `attributes` have other keys (the
    # breadth-over-depth bundle's first train shard does), so the reader passes the card's.
    card = datasets.load_dataset_builder(str(out), cache_dir=str(tmp_path / "hf")).info.features
    first = json.loads((out / "train" / shards.SHARDS_JSON).read_text())["shards"][0]
    one = datasets.load_dataset(
        str(out), data_files={"train": f"train/{first['name']}"}, split="train",
        cache_dir=str(tmp_path / "one"), features=card,
    )  # fmt: skip
    assert len(one) == first["samples"] and one.features == card


# ------------------------------------------------- defect 4: a refused rerun writes nothing


def test_refused_rerun_writes_nothing_and_a_rerun_clears_killed_temp_files(
    clones: list[Path], tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    checkout = clones[1].parent.parent
    out = tmp_path / "shards"
    shutil.copytree(clones[1], out)
    # a writer killed mid-shard leaves its temp file behind
    stale = [out / "train" / ".shard-000000.tar.k1ll3d.tmp", out / ".manifest.parquet.x.tmp"]
    for p in stale:
        p.write_bytes(b"half a tar")
    before = tree(out)
    proc = build(checkout, out, subprocess_env, "features.n_mels=32")
    assert proc.returncode != 0 and "different configuration" in proc.stderr, proc.stderr[-3000:]
    assert tree(out) == before  # manifest.parquet included: refused before writing anything

    # the next run with the build's own config removes the leftovers and resumes (no-op here)
    proc = build(checkout, out, subprocess_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any(p.exists() for p in stale)
    assert _tars(out) == _tars(clones[1])
