"""A real Ray head on loopback for tests that submit jobs to it (`ray start --head --block`).

Every port is a free loopback port; the head runs in its own process group and is stopped by
killing that group (never a global `ray stop`, which would stop other Ray instances on the
machine); its temp dir is short (Ray's unix socket paths are length-limited) and removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from conftest import free_port

BIN = Path(sys.executable).parent


def http_status(url: str, token: str | None = None) -> int:
    """HTTP status of GET ``url`` (a bearer token if given); -1 while nothing listens."""
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return -1


@contextlib.contextmanager
def ray_head(env: dict[str, str], num_cpus: int = 2, token: str | None = None) -> Iterator[str]:
    """Start a head with ``env`` and yield its dashboard/job API address once it answers."""
    env = dict(env, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    env.pop("RAY_ADDRESS", None)
    dash = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1"]
    cmd += [f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}"]
    cmd += [f"--num-cpus={num_cpus}", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    cmd += [f"--ray-client-server-port={free_port()}"]
    cmd += [f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"]
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)  # fmt: skip
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while http_status(f"{address}/api/version", token) != 200:
            assert head.poll() is None, f"ray head exited: {head.stdout.read()[-3000:]}"  # type: ignore[union-attr]
            assert time.time() < deadline, "ray head did not come up"
            time.sleep(1)
        yield address
    finally:
        _stop(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop(head: subprocess.Popen) -> None:
    """SIGTERM the head's process group, SIGKILL what is left of it after 30 s."""
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    time.sleep(1)  # what the head spawned in its group may still be exiting
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    head.wait()
