"""The Ray shard builder end to end, through its real entry point (embedded local Ray).

Builds a small slice of the bundled corpora once per module and checks the artifacts; the
slow tests add determinism, kill -9 resume, corruption + repair and bad inputs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dataprep.core import atomic, shards, tario

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "test_small.yaml"


def build(
    out: Path, env: dict, *overrides: str, config: Path = CONFIG, check: bool = True
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "pipelines/build_shards.py",
        "--config",
        str(config),
        "--out",
        str(out),
        "--num-cpus",
        "2",
        *overrides,
    ]
    proc = subprocess.run(
        cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    if check:
        assert proc.returncode == 0, (
            f"build failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def sha_list(out: Path) -> dict[str, list[tuple[str, str]]]:
    res = {}
    for split in ("train", "val", "test"):
        p = out / split / shards.SHARDS_JSON
        if p.exists():
            res[split] = [(s["name"], s["sha256"]) for s in json.loads(p.read_text())["shards"]]
    return res


@pytest.fixture(scope="module")
def built(tmp_path_factory, subprocess_env) -> Path:
    out = tmp_path_factory.mktemp("build") / "shards"
    proc = build(out, subprocess_env)
    assert "shards[train]" in proc.stdout and "build.json" in proc.stdout
    return out


def test_artifacts_match_contract(built: Path):
    record = json.loads((built / shards.BUILD_JSON).read_text())
    assert record["feature_fingerprint"] and record["versions"]["torch"].startswith("2.13")
    total = 0
    for split in ("train", "val", "test"):
        d = built / split
        if not d.exists():
            continue
        meta = json.loads((d / shards.SHARDS_JSON).read_text())
        keys = []
        for entry in meta["shards"]:
            tar = d / entry["name"]
            assert atomic.sha256_file(tar) == entry["sha256"]
            assert tar.stat().st_size == entry["bytes"]
            samples = list(tario.iter_shard(tar))
            assert len(samples) == entry["samples"]
            for s in samples:
                m = s["json"]
                assert s["__key__"] == m["id"] and m["split"] == split
                assert m["feature_fingerprint"] == record["feature_fingerprint"]
                assert s["mel.npy"].dtype.name == "float16" and s["mel.npy"].shape[0] == 64
                assert m["texts"] and s["txt"] == m["texts"][0]["text"]
                assert {
                    "id",
                    "corpus",
                    "source_id",
                    "source_uri",
                    "segment",
                    "lang",
                    "duration",
                    "sample_rate",
                    "labels",
                    "speaker",
                    "license",
                    "audio_sha1",
                    "texts",
                } <= set(m)
                keys.append(s["__key__"])
        index = pq.read_table(d / shards.INDEX).to_pylist()
        assert sorted(r["key"] for r in index) == sorted(set(keys) - set(meta["exclude"]))
        rejects = pq.read_table(d / shards.REJECTS)
        assert rejects.column_names == ["source", "corpus", "stage", "reason", "detail"]
        total += len(index)
    assert total == sum(c["samples"] for c in record["counts"].values()) > 0
    # esc50 fold 5 is the held-out eval fold: it must land in test, never train
    train_idx = pq.read_table(built / "train" / shards.INDEX).to_pylist()
    assert not any(r["corpus"] == "esc50" and "/5-" in r["key"] for r in train_idx)


def test_stock_webdataset_reads_shards(built: Path):
    import webdataset as wds

    urls = [str(p) for p in shards.shard_paths(built / "train")]
    ds = wds.WebDataset(
        urls, shardshuffle=False, nodesplitter=wds.split_by_node, empty_check=False
    ).decode()
    n = 0
    for s in ds:
        assert s["mel.npy"].ndim == 2 and isinstance(s["json"], dict) and isinstance(s["txt"], str)
        n += 1
    assert n == json.loads((built / "train" / shards.SHARDS_JSON).read_text())["samples"]


def test_wids_reads_shards_with_generated_index(built: Path):
    import wids

    index = built / "train" / "wids-index.json"
    assert index.exists(), "the builder writes a wids index next to shards.json"
    ds = wids.ShardListDataset(str(index), transformations=[])
    meta = json.loads((built / "train" / shards.SHARDS_JSON).read_text())
    assert len(ds) == meta["samples"]
    s = ds[len(ds) - 1]
    assert ".mel.npy" in s and ".json" in s


def test_ray_data_read_webdataset_reads_shards(built: Path):
    import ray

    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        rows = ray.data.read_webdataset(
            [str(p) for p in shards.shard_paths(built / "train")]
        ).take_all()
    finally:
        ray.shutdown()
    meta = json.loads((built / "train" / shards.SHARDS_JSON).read_text())
    assert len(rows) == meta["samples"]
    assert all(r["mel.npy"].shape[0] == 64 and r["json"]["id"] == r["__key__"] for r in rows)


def test_rerun_is_a_no_op_and_feature_change_refuses_to_mix(built: Path, subprocess_env):
    before = sha_list(built)
    mtimes = {p: p.stat().st_mtime_ns for p in built.rglob("shard-*.tar")}
    proc = build(built, subprocess_env)
    assert "0 to build" in proc.stderr
    assert sha_list(built) == before
    assert {p: p.stat().st_mtime_ns for p in built.rglob("shard-*.tar")} == mtimes
    proc = build(built, subprocess_env, "features.n_mels=80", check=False)
    assert (
        proc.returncode == 1
        and "refusing to mix" in proc.stderr
        and "feature_fingerprint" in proc.stderr
    )


def test_bad_config_fails_before_work_naming_the_key(tmp_path, subprocess_env):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(CONFIG.read_text() + "\nbogus_section: {x: 1}\n")
    proc = build(tmp_path / "o", subprocess_env, config=cfg, check=False)
    assert proc.returncode == 2 and "unknown key 'bogus_section'" in proc.stderr
    proc = build(tmp_path / "o", subprocess_env, "build.shards.target_mb=lots", check=False)
    assert proc.returncode == 2 and "build.shards.target_mb" in proc.stderr
    cfg.write_text(CONFIG.read_text().replace("tests/fixtures/corpora/esc50_mini", "no/such/esc50"))
    proc = build(tmp_path / "o", subprocess_env, config=cfg, check=False)
    assert proc.returncode == 2 and "no/such/esc50" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_reader_option_typo_exits_2_before_ray_starts(tmp_path, subprocess_env):
    """A misspelt reader option fails when the config loads: a `ray` that refuses to be
    imported proves no Ray work (not even the import) happened before the error."""
    stub = tmp_path / "stub" / "ray"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('ray must not be imported here')\n")
    env = dict(subprocess_env)
    env["PYTHONPATH"] = os.pathsep.join([str(stub.parent), env["PYTHONPATH"]])
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(CONFIG.read_text().replace("eval_folds:", "eval_fold:"))
    assert cfg.read_text() != CONFIG.read_text()
    proc = build(tmp_path / "o", env, config=cfg, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "unknown option 'eval_fold'" in proc.stderr and "eval_folds" in proc.stderr
    assert "ray must not be imported" not in proc.stderr and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_two_builds_are_byte_identical(built: Path, tmp_path, subprocess_env):
    other = tmp_path / "again"
    build(other, subprocess_env)
    assert sha_list(other) == sha_list(built)
    for split in sha_list(built):
        a = json.loads((built / split / shards.SHARDS_JSON).read_text())
        b = json.loads((other / split / shards.SHARDS_JSON).read_text())
        assert a == b


@pytest.mark.slow
def test_kill_9_mid_build_then_resume_equals_uninterrupted(built: Path, tmp_path, subprocess_env):
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "pipelines/build_shards.py",
        "--config",
        str(CONFIG),
        "--out",
        str(out),
        "--num-cpus",
        "1",
        "build.shards.max_parallel_tasks=1",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=subprocess_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list(out.glob("*/.parts/*.json")):
            # a tar under its final name is always complete
            for tar in out.glob("*/shard-*.tar"):
                with tarfile.open(tar) as t:
                    t.getmembers()
            time.sleep(0.05)
        assert list(out.glob("*/.parts/*.json")), "no shard finished before the deadline"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "train" / shards.SHARDS_JSON).exists() or sha_list(out) != sha_list(built)
    build(out, subprocess_env)
    assert sha_list(out) == sha_list(built)
    assert not list(out.rglob("*.tmp"))


@pytest.mark.slow
def test_verify_finds_corruption_and_repair_fixes_it(built: Path, tmp_path, subprocess_env):
    out = tmp_path / "copy"
    shutil.copytree(built, out)
    victim = shards.shard_paths(out / "train")[0]
    data = bytearray(victim.read_bytes())
    data[700] ^= 0xFF
    victim.write_bytes(bytes(data))
    verify = [sys.executable, "pipelines/verify_shards.py", str(out)]
    proc = subprocess.run(
        verify, check=False, cwd=REPO, env=subprocess_env, capture_output=True, text=True
    )
    assert proc.returncode == 1 and victim.name in proc.stdout and "sha256" in proc.stdout
    proc = subprocess.run(
        [*verify, "--repair", "--config", str(CONFIG)],
        check=False,
        cwd=REPO,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "repaired" in proc.stdout
    assert sha_list(out) == sha_list(built)


@pytest.mark.slow
def test_bad_inputs_end_as_reasoned_rejects_and_the_build_succeeds(
    corpora_root, tmp_path, subprocess_env
):
    """Every row of bad_inputs/manifest.jsonl (5-min clip generated here) ends as samples or a
    reject with the reason its README expects; the build itself succeeds."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "layout_builders", REPO / "tests/fixtures/layouts/builders.py"
    )
    layouts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layouts)
    bad = tmp_path / "bad_inputs"
    shutil.copytree(corpora_root / "bad_inputs", bad)
    shutil.copy(layouts.long_clip(corpora_root, tmp_path), bad / "very_long_5min.ogg")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "build:\n"
        # the texts of bad_inputs are captions (a transcript of 5 min would be one segment or
        # a transcript_too_long reject; captioned clips are cut into windows)
        f"  corpora: [{{name: bad, reader: nemo, root: {bad}, splits: [manifest.jsonl],\n"
        "             options: {default_task: caption}}]\n"
        "  splits: {val_fraction: 0.0}\n"
        "  shards: {target_mb: 4}\n"
    )
    out = tmp_path / "out"
    build(out, subprocess_env, config=cfg)
    rejects = pq.read_table(out / "train" / shards.REJECTS).to_pylist()
    by_file: dict[str, set[str]] = {}
    for r in rejects:
        name = r["source"].split(":", 1)[-1].split("@")[0]
        by_file.setdefault(name, set()).add(r["reason"])
    expected = {
        "empty.wav": "empty_file",
        "not_audio.wav": "not_audio",
        "silent.wav": "silent",
        "too_short_0.05s.wav": "too_short",
        "nan_inf_float.wav": "non_finite",
        "missing_file.wav": "missing_file",
    }
    for name, reason in expected.items():
        assert reason in by_file.get(name, set()), (name, by_file.get(name))
    assert all(r["detail"] for r in rejects)
    index = pq.read_table(out / "train" / shards.INDEX).to_pylist()
    kept = {r["key"]: r for r in index}
    meta = {
        s["__key__"]: s["json"]
        for p in shards.shard_paths(out / "train")
        for s in tario.iter_shard(p)
    }
    sources = [m["source_id"] for k, m in meta.items() if k in kept]
    # the duplicate group (byte copy, lossless re-encode, repeated row) is reduced to one sample
    dups = [
        s
        for s in sources
        if s in {"dup_original.wav", "dup_copy_renamed.wav", "dup_reencoded.flac"}
    ]
    assert len(dups) == 1, dups
    # the 5-minute clip is cut into bounded segments; the clipped clip is kept with a flag
    long_segs = [m for m in meta.values() if m["source_id"] == "very_long_5min.ogg"]
    assert len(long_segs) >= 10 and all(m["duration"] <= 10.01 for m in long_segs)
    clipped = [m for m in meta.values() if m["source_id"] == "clipped.wav"]
    assert clipped and any("clip" in f for f in clipped[0]["flags"])
    # the weird transcript is normalized: no control, zero-width or bidi characters left
    weird = [m for m in meta.values() if m["source_id"] == "weird_transcript_audio.wav"]
    if weird:
        text = weird[0]["texts"][0]["text"]
        assert not any(ch in text for ch in "\x00\x07\t\r\n\u200b\u202e\u202c")


@pytest.mark.slow
def test_decontamination_through_the_build(corpora_root, tmp_path, subprocess_env):
    """An eval clip that is also a training input ends as an eval_overlap reject; unreadable
    eval items are recorded in eval_rejects.parquet (never silently skipped)."""
    clips = sorted((corpora_root / "esc50_mini" / "audio").glob("*.wav"))[:4]
    train, ev = tmp_path / "train", tmp_path / "eval"
    train.mkdir()
    ev.mkdir()
    for c in clips:
        shutil.copy(c, train / c.name)
    shutil.copy(clips[0], ev / "same.wav")
    (ev / "broken.wav").write_bytes(b"RIFF this is not a wave file")
    rows = [{"audio_filepath": n, "text": "a sound", "duration": 5.0}
            for n in ("same.wav", "broken.wav", "absent.wav")]  # fmt: skip
    (ev / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "decon.yaml"
    cfg.write_text(
        "build:\n"
        f"  corpora: [{{name: tr, reader: folder, root: {train}, options: {{task: sfx}}}}]\n"
        f"  eval_corpora: [{{name: ev, reader: nemo, root: {ev}, splits: [manifest.jsonl]}}]\n"
        "  splits: {val_fraction: 0.0}\n"
        "  filters: {require_text: false}\n"
    )
    out = tmp_path / "out"
    build(out, subprocess_env, config=cfg)
    rejects = pq.read_table(out / "train" / shards.REJECTS).to_pylist()
    overlap = [r for r in rejects if r["reason"] == "eval_overlap"]
    assert [r["source"] for r in overlap] == [f"tr:{clips[0].name}"] and "ev-" in overlap[0][
        "detail"
    ]
    ev_rejects = pq.read_table(out / "eval_rejects.parquet").to_pylist()
    assert {(r["source"], r["stage"]) for r in ev_rejects} >= {("ev:broken.wav", "decode")}
    assert any(r["reason"] == "missing_file" for r in ev_rejects)
    record = json.loads((out / shards.BUILD_JSON).read_text())
    assert record["eval_rejects"] == len(ev_rejects) == 2


def test_help_lists_every_key_the_build_reads(subprocess_env):
    """`--help` is the key reference: every features/build key with its type and default (the
    LLM backends, presets and curation included), generated from the schema."""
    proc = subprocess.run(
        [sys.executable, "pipelines/build_shards.py", "--help"], cwd=REPO, env=subprocess_env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for key in ("features.preset", "build.out", "build.shards.target_mb",
                "build.augment.audio_views", "build.curation.percentile"):  # fmt: skip
        assert f"  {key}:" in out, key
    assert "build.augment.llm.server: 'none' | 'embedded' | 'inprocess' | 'external'" in out
