"""`ray job submit` against a loopback-only local head, exactly as the README shows.

The head is started in its own process group with `ray start --block` and stopped by killing
that group (not a global `ray stop`, which would also stop other Ray instances on the machine).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port

from dataprep.core import atomic, shards

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_ray_job_submit_builds_shards_on_a_loopback_head(tmp_path, subprocess_env):
    env = dict(subprocess_env)
    env["RAY_AUTH_MODE"] = (
        "disabled"  # see ENVIRONMENT.md: an embedded ray.init() leaves a token behind
    )
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env.pop("RAY_ADDRESS", None)
    gcs, dash = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(
        prefix="rj", dir="/tmp"
    )  # short: Ray's unix socket paths are length-limited
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--num-cpus=2",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert head.poll() is None, f"ray head exited: {head.stdout.read()[-3000:]}"
            assert time.time() < deadline, "ray head did not come up"
            time.sleep(1)
        out = tmp_path / "shards"
        submit_env = dict(env, RAY_API_SERVER_ADDRESS=address)
        proc = subprocess.run(
            [
                str(BIN / "ray"),
                "job",
                "submit",
                "--working-dir",
                ".",
                "--",
                "python",
                "pipelines/build_shards.py",
                "--config",
                "configs/test_small.yaml",
                "--out",
                str(out),
            ],
            cwd=REPO,
            env=submit_env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        assert "succeeded" in proc.stdout.lower()
        assert "shards[train]" in proc.stdout  # the job's own output, streamed back
        assert "shards " in proc.stdout  # progress lines are visible in the job logs
        for split in ("train",):
            meta = json.loads((out / split / shards.SHARDS_JSON).read_text())
            assert meta["samples"] > 0
            for entry in meta["shards"]:
                assert atomic.sha256_file(out / split / entry["name"]) == entry["sha256"]
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        # anything the head spawned in its process group is gone too
        time.sleep(1)
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
