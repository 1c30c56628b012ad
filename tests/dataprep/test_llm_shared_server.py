"""One embedded LLM server per node (issue 20): augmenters in this and another process share
one server started under a supervisor; a killed holder's lease ends with it; the server stops
once nobody holds a lease.

The supervisor and its lease handling are production's (:class:`EmbeddedServer`); the program
it supervises is the loopback test server (``llm_fault_server.py``) instead of llama.cpp's,
which needs the ``[llm]`` extra (the real one runs in test_augment_llm.py when installed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from dataprep.augment.llm_server import EmbeddedServer, _alive
from dataprep.core.config import LLMConfig

FAULT_SERVER = Path(__file__).with_name("llm_fault_server.py")
LINGER_S = 1.0

# The other process: an augmenter's server on the same node, held until stdin closes.
CHILD = """
import json, sys
from pathlib import Path
from dataprep.augment.llm_server import EmbeddedServer
from dataprep.core.config import LLMConfig
cfg = LLMConfig(**json.loads(sys.argv[1]))
tmp = Path(sys.argv[2])
def command(cfg, port):
    return [sys.executable, sys.argv[3], "--plan", str(tmp / "plan.json"), "--log",
            str(tmp / "log.jsonl"), "--port-file", str(tmp / "port"), "--port", str(port)]
s = EmbeddedServer(cfg, command, linger_s=float(sys.argv[4]))
print(json.dumps({"pid": s.pid, "port": s.port}), flush=True)
sys.stdin.read()
"""


def _command(tmp: Path) -> Any:
    def command(cfg: LLMConfig, port: int) -> list[str]:
        return [sys.executable, str(FAULT_SERVER), "--plan", str(tmp / "plan.json"),
                "--log", str(tmp / "log.jsonl"), "--port-file", str(tmp / "port"),
                "--port", str(port)]  # fmt: skip

    return command


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return False


def test_one_server_per_node_shared_across_processes_and_ended_when_idle(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    (tmp_path / "plan.json").write_text(json.dumps({"default": {"replies": ["ok"]}}))
    model = tmp_path / "model.gguf"  # part of the node-registry key: this test's own server
    model.write_bytes(b"")
    cfg = LLMConfig(server="embedded", model_path=str(model), startup_timeout_s=60)
    a = EmbeddedServer(cfg, _command(tmp_path), linger_s=LINGER_S)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, cfg.model_dump_json(), str(tmp_path), str(FAULT_SERVER),
         str(LINGER_S)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=subprocess_env, text=True,
    )  # fmt: skip
    try:
        other = json.loads(child.stdout.readline())  # type: ignore[union-attr]
        b = EmbeddedServer(cfg, _command(tmp_path), linger_s=LINGER_S)
        # one server (one supervisor) for three augmenters in two processes
        assert {a.pid, b.pid, other["pid"]} == {a.pid}
        assert {a.port, b.port, other["port"]} == {a.port}
        assert _up(a.port) and len(list(a.root.glob("lease-*"))) == 3
        a.stop()
        b.stop()
        time.sleep(LINGER_S + 1.5)
        assert _up(a.port), "the other process still holds a lease: the server must stay"
        child.kill()  # the holder dies without releasing: its lease dies with it
        child.wait(timeout=10)
        assert _gone_within(a.pid, LINGER_S + 10), "the supervisor outlived every lease"
        assert not _up(a.port) and not (a.root / "server.json").exists()
        # the next augmenter on the node starts a new server
        c = EmbeddedServer(cfg, _command(tmp_path), linger_s=LINGER_S)
        assert c.pid != a.pid and _up(c.port)
        c.stop()
        assert _gone_within(c.pid, LINGER_S + 10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        shutil.rmtree(a.root, ignore_errors=True)  # this test's node registry (its own key)
