"""A two-node Ray cluster on one machine builds shards, and both nodes do shard work.

Real Ray, real `ray start`: a head node and a second node joined with `ray start --address`,
each with its own custom resource (`head`, `worker2`), as infra/ray/ describes for a real
cluster. Both live inside a private network namespace that has only loopback, so the cluster
is reachable from nowhere else and cannot collide with other Ray instances or ports on this
machine (ENVIRONMENT.md: outside a namespace a second node registers under the external
address and listens on all interfaces).

Cleanup is scoped to the namespace: every process in it (`ip netns pids`) is stopped, then the
namespace is deleted. We do not call `ray stop`: it finds Ray processes by name over the whole
machine (network namespaces do not isolate PIDs), so it would stop other people's clusters too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GCS_PORT = 6380  # the namespace has its own port space: fixed ports cannot clash with the host

pytestmark = pytest.mark.skipif(
    shutil.which("ip") is None or os.geteuid() != 0,
    reason="needs iproute2 and root to create a network namespace "
    "(infra/install/setup.sh installs iproute2)",
)


def _ns_run(ns: str, cmd: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *cmd], env=env, text=True, capture_output=True, **kw
    )


def _ns_start(ns: str, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # own process group, output to a file (a full pipe would block `ray start --block`)
    fh = open(log, "w")  # noqa: SIM115 - closed with the process in the fixture
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, *cmd],
        env=env,
        stdout=fh,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop_namespace(ns: str, procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.time() + 20
    while time.time() < deadline:
        pids = subprocess.run(
            ["ip", "netns", "pids", ns], capture_output=True, text=True
        ).stdout.split()
        if not pids:
            break
        sig = signal.SIGTERM if time.time() < deadline - 10 else signal.SIGKILL
        for pid in pids:
            try:
                os.kill(int(pid), sig)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture()
def two_node_cluster(subprocess_env, tmp_path):
    """(namespace, env for drivers in it, node ids by role) of a running head + worker cluster."""
    ns = f"pc{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    procs: list[subprocess.Popen] = []
    temp_dir = tempfile.mkdtemp(
        prefix="r2", dir="/tmp"
    )  # short: Ray's unix socket paths are length-limited
    env = dict(subprocess_env)
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    common = [
        "--block",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--object-store-memory=100000000",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        procs.append(
            _ns_start(
                ns,
                [
                    str(BIN / "ray"),
                    "start",
                    "--head",
                    f"--port={GCS_PORT}",
                    "--include-dashboard=false",
                    "--dashboard-agent-listen-port=52401",
                    "--resources",
                    '{"head": 1}',
                    *common,
                ],
                env,
                tmp_path / "head.log",
            )
        )
        _wait_started(tmp_path / "head.log", procs[-1])
        procs.append(
            _ns_start(
                ns,
                [
                    str(BIN / "ray"),
                    "start",
                    f"--address=127.0.0.1:{GCS_PORT}",
                    "--dashboard-agent-listen-port=52402",
                    "--resources",
                    '{"worker2": 1}',
                    *common,
                ],
                env,
                tmp_path / "worker.log",
            )
        )
        _wait_started(tmp_path / "worker.log", procs[-1])
        nodes = _nodes(ns, env, 2)
        yield ns, dict(env, RAY_ADDRESS=f"127.0.0.1:{GCS_PORT}"), nodes
    finally:
        _stop_namespace(ns, procs)
        shutil.rmtree(temp_dir, ignore_errors=True)


_NODES_PY = """
import json, ray
ray.init(address="127.0.0.1:%d", logging_level="ERROR")
print("NODES " + json.dumps([
    {"id": n["NodeID"], "ip": n["NodeManagerAddress"], "res": n["Resources"]}
                             for n in ray.nodes() if n["Alive"]]))
"""


def _wait_started(log: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """`ray start` prints this once its node is up (then --block keeps it in the foreground)."""
    deadline = time.time() + timeout
    while "Ray runtime started" not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"ray start exited: {log.read_text()[-3000:]}"
        assert time.time() < deadline, f"ray start did not come up: {log.read_text()[-3000:]}"
        time.sleep(0.5)


def _nodes(ns: str, env: dict[str, str], n: int) -> dict[str, str]:
    """Node id by role (the custom resource each node was started with), once n nodes are alive."""
    deadline = time.time() + 60
    while True:
        r = _ns_run(ns, [sys.executable, "-c", _NODES_PY % GCS_PORT], env, timeout=120)
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("NODES ")), None)
        nodes = json.loads(line[6:]) if line else []
        if len(nodes) >= n:
            assert {x["ip"] for x in nodes} == {"127.0.0.1"}, nodes  # loopback only
            return {("head" if "head" in x["res"] else "worker2"): x["id"] for x in nodes}
        assert time.time() < deadline, (
            f"cluster did not reach {n} nodes: {r.stdout[-1000:]} {r.stderr[-2000:]}"
        )
        time.sleep(2)


@pytest.mark.slow
def test_build_shards_runs_on_both_nodes(two_node_cluster, tmp_path):
    ns, env, nodes = two_node_cluster
    assert set(nodes) == {"head", "worker2"} and len(set(nodes.values())) == 2
    out = tmp_path / "shards"
    # The same command as the RayJob manifest's entrypoint; RAY_ADDRESS makes ray.init() join.
    # max_parallel_tasks=4 keeps more shard tasks in flight than one node has CPUs (1 each), so
    # the scheduler must place work on the second node.
    r = _ns_run(
        ns,
        [
            sys.executable,
            "pipelines/build_shards.py",
            "--config",
            "configs/test_small.yaml",
            f"build.out={out}",
            "build.shards.max_parallel_tasks=4",
        ],
        env,
        cwd=REPO,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    record = json.loads((out / "build.json").read_text())
    tasks = record["tasks"]
    assert len(tasks) >= 2, tasks
    used = {t["node_id"] for t in tasks}
    assert used == set(nodes.values()), (used, nodes)  # both nodes built shards, no third node
    # every shard a task reports is on disk, with the size its shards.json entry records
    in_sets = 0
    for split in record["counts"]:
        meta = json.loads((out / split / "shards.json").read_text())
        in_sets += meta["samples"]
        for entry in meta["shards"]:
            assert (out / split / entry["name"]).stat().st_size == entry["bytes"]
    assert in_sets == sum(t["samples"] for t in tasks) > 0
