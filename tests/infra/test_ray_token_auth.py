"""Ray token authentication, as infra/ turns it on (RAY_AUTH_MODE=token + RAY_AUTH_TOKEN), on a
real loopback-only head of the pinned Ray: a caller without the token, or with another one, is
refused; `ray job submit` with it runs.

The head runs in its own process group (`ray start --block`) and is stopped by killing that
group, never by a global `ray stop` (which would stop other Ray instances on the machine).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _get(url: str, token: str | None) -> int:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return -1  # not listening yet


@pytest.mark.slow
def test_token_auth_refuses_callers_without_the_token(tmp_path, subprocess_env):
    token = secrets.token_hex(16)
    env = dict(subprocess_env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    dash = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ra", dir="/tmp")  # Ray's socket paths are length-limited
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         "--num-cpus=1", "--disable-usage-stats", f"--temp-dir={temp_dir}",
         f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
         f"--metrics-export-port={free_port()}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        text=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while _get(f"{address}/api/version", token) != 200:
            assert head.poll() is None, f"ray head exited: {head.stdout.read()[-3000:]}"  # type: ignore[union-attr]
            assert time.time() < deadline, "ray head did not come up"
            time.sleep(1)
        # the job API (what `ray job submit` and anyone on the network would call)
        assert _get(f"{address}/api/jobs/", token) == 200
        assert _get(f"{address}/api/jobs/", None) in (401, 403)
        assert _get(f"{address}/api/jobs/", "not-" + token) in (401, 403)

        def submit(tok: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--", "python", "-c", "print('token ok')"],
                cwd=tmp_path, env=dict(env, RAY_API_SERVER_ADDRESS=address, RAY_AUTH_TOKEN=tok),
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip

        bad = submit("not-" + token)
        assert bad.returncode != 0 and "token ok" not in bad.stdout
        good = submit(token)
        assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
        assert "token ok" in good.stdout and "succeeded" in good.stdout.lower()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
