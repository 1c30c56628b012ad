"""`ray job submit` against a loopback-only local head (tests/rayhead.py), exactly as the
README shows."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from rayhead import BIN, ray_head

from dataprep.core import atomic, shards

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ray_job_submit_builds_shards_on_a_loopback_head(tmp_path, subprocess_env):
    # see ENVIRONMENT.md: an embedded ray.init() leaves a token behind
    env = dict(subprocess_env, RAY_AUTH_MODE="disabled")
    with ray_head(env) as address:
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
