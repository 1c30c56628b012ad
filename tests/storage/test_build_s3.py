"""pipelines/build_shards.py with build.out in a bucket of a real S3 API on loopback (moto):
the same tars as a local build, a SIGKILLed build resumed from the bucket listing, and
pipelines/verify_shards.py (--repair) on the remote set. Real Ray (embedded, 2 CPUs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataprep.core import storage

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "test_small.yaml"
SPLITS = ("train", "val", "test")


def _cmd(out: str, scratch: Path) -> list[str]:
    return [sys.executable, "pipelines/build_shards.py", "--config", str(CONFIG), "--out", out,
            "--num-cpus", "2", f"build.scratch={scratch}"]  # fmt: skip


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, f"{proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _sha_list(root: str | Path) -> dict[str, list[tuple[str, str]]]:
    out = {}
    for split in SPLITS:
        try:
            meta = json.loads(storage.read_bytes(storage.join(root, split, "shards.json")))
        except FileNotFoundError:
            continue
        out[split] = [(e["name"], e["sha256"]) for e in meta["shards"]]
    return out


@pytest.fixture(scope="module")
def env(subprocess_env, s3_module) -> dict[str, str]:
    return {**subprocess_env, **s3_module.env}


@pytest.fixture(scope="module")
def local_build(tmp_path_factory, env) -> dict[str, list[tuple[str, str]]]:
    out = tmp_path_factory.mktemp("local") / "shards"
    _run(_cmd(str(out), tmp_path_factory.mktemp("unused")), env)
    return _sha_list(out)


@pytest.mark.slow
def test_build_into_bucket_equals_local_build_and_verifies(s3_module, env, local_build, tmp_path):
    uri = s3_module.bucket("build-plain") + "/set"
    proc = _run(_cmd(uri, tmp_path / "scratch"), env)
    assert f"build record: {uri}/build.json" in proc.stdout
    assert _sha_list(uri) == local_build and sum(map(len, local_build.values())) >= 3
    # nothing else than the finished set in the bucket; scratch keeps no tar
    assert not list((tmp_path / "scratch").rglob("shard-*.tar"))
    keys = {o["Key"] for o in s3_module.client().list_objects_v2(Bucket="build-plain")["Contents"]}
    assert {
        "set/build.json",
        "set/plan.json",
        "set/manifest.parquet",
        "set/train/shards.json",
        "set/train/index.parquet",
        "set/train/shard-000000.tar",
    } <= keys
    verify = [sys.executable, "pipelines/verify_shards.py", uri]
    r = subprocess.run(
        verify, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert r.returncode == 0 and f"ok: {uri} is sound" in r.stdout, r.stdout + r.stderr
    # a flipped byte in one remote tar: found, then --repair rebuilds only that shard
    name = f"{uri}/train/shard-000001.tar"
    data = bytearray(storage.read_bytes(name))
    data[100] ^= 0xFF
    storage.write_bytes(name, bytes(data))
    r = subprocess.run(
        verify, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert r.returncode == 1 and "train/shard-000001.tar: sha256/size differs" in r.stdout, r.stdout
    repair = [*verify, f"build.scratch={tmp_path}/s", "--repair", "--config", str(CONFIG)]
    r = subprocess.run(repair,
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                          check=False)  # fmt: skip
    assert r.returncode == 0 and f"repaired: {uri} is sound" in r.stdout, (
        r.stdout + r.stderr[-3000:]
    )
    assert "1 to build" in r.stderr
    assert _sha_list(uri) == local_build


@pytest.mark.slow
def test_sigkill_mid_build_then_rerun_gives_the_same_tars(s3_module, env, local_build, tmp_path):
    uri = s3_module.bucket("build-killed") + "/set"
    client = s3_module.client()
    p = subprocess.Popen(
        _cmd(uri, tmp_path / "scratch"),
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None:
            listed = client.list_objects_v2(Bucket="build-killed", Prefix="set/").get(
                "Contents", []
            )
            if any(o["Key"].endswith(".tar") for o in listed):
                break
            time.sleep(0.05)
        assert p.poll() is None, f"build ended before the kill: {p.stdout.read()[-3000:]}"
        os.killpg(p.pid, signal.SIGKILL)  # driver, raylet and shard workers, mid-upload or not
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
    assert not storage.exists(f"{uri}/train/shards.json")  # never published half a set
    proc = _run(_cmd(uri, tmp_path / "scratch"), env)
    assert "already done" in proc.stderr
    assert _sha_list(uri) == local_build


def test_remote_out_errors_are_one_line_exit_2(s3_module, env, tmp_path):
    bad = {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # nothing listens there
    r = subprocess.run(_cmd("s3://nowhere-bucket/set", tmp_path), cwd=REPO, env=bad,
                       capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert r.returncode == 2 and "s3://nowhere-bucket/set: storage unreachable" in r.stderr, (
        r.stderr
    )
    assert "Started a local Ray" not in r.stderr + r.stdout
    nocred = {k: v for k, v in env.items() if not k.startswith("AWS_") or k == "AWS_ENDPOINT_URL"}
    nocred.update(AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_CONFIG_FILE="/nonexistent",
                  AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
    r = subprocess.run(_cmd("s3://any-bucket/set", tmp_path), cwd=REPO, env=nocred,
                       capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert r.returncode == 2 and "s3://any-bucket/set: no credentials found" in r.stderr, r.stderr
    r = subprocess.run(_cmd("https://host/set", tmp_path), cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert r.returncode == 2 and "build.out must be a local/shared path or an s3" in r.stderr
