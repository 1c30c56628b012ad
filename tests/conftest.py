"""Shared fixtures: the bundled real-audio sample corpora and helpers for subprocess tests."""

from __future__ import annotations

import faulthandler
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLED_CORPORA = REPO / "tests" / "fixtures" / "corpora"
PYTHON = sys.executable


@pytest.fixture(scope="session", autouse=True)
def _llm_weights_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The in-process LLM's dequantized copy (dataprep/augment/llm_local.py) goes to this run's
    temp dir, not the user's ~/.cache; child processes inherit it, so one run dequantizes once."""
    os.environ.setdefault("POLYCLAP_LLM_CACHE", str(tmp_path_factory.mktemp("llm_weights")))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def corpora_root() -> Path:
    """The real-audio corpora bundled with the repository (subset of shared/corpora)."""
    assert BUNDLED_CORPORA.is_dir(), f"bundled corpora missing at {BUNDLED_CORPORA}"
    return BUNDLED_CORPORA


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def subprocess_env() -> dict[str, str]:
    """Environment for child processes: the repo importable, quiet Ray, loopback only."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("OMP_NUM_THREADS", "1")
    # `python`, `ray`, `deepspeed` in child processes resolve to this environment's executables
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@pytest.fixture(scope="module")
def s3_module():
    """A moto S3 server on loopback shared by a module's tests (tests/fixtures/s3.py), with
    ``os.environ`` pointed at it; stopped by its handle at the module's end."""
    from fixtures.s3 import s3_environ, s3_server

    with s3_server() as server, s3_environ(server):
        yield server


@pytest.fixture(scope="module")
def gcs_module():
    """A GCS emulator on loopback shared by a module's tests (tests/fixtures/gcs.py), with
    ``os.environ`` pointed at it; stopped by its PID at the module's end."""
    from fixtures.gcs import gcs_server

    with gcs_server() as server:
        yield server


@pytest.fixture()
def s3():
    """A moto S3 server of this test only (a test may stop it part-way)."""
    from fixtures.s3 import s3_environ, s3_server

    with s3_server() as server, s3_environ(server):
        yield server


@pytest.fixture(scope="module")
def local_set(tmp_path_factory: pytest.TempPathFactory, corpora_root: Path) -> Path:
    """A local shard set of real bundled audio (train: 5 shards, val: 1), written by the loader
    tests' builder; the object-storage tests copy it into a bucket."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "dataprep"))
    from test_loader import make_shards

    root = tmp_path_factory.mktemp("s3set")
    make_shards(corpora_root, root, n_shards=5, limit=60)
    make_shards(corpora_root, root, n_shards=1, limit=24, split="val")
    return root


# --- the suite's exit does not depend on what a test left behind ----------------------------
# pytest has printed its summary by pytest_unconfigure; what runs after it (interpreter shutdown
# joining non-daemon threads, multiprocessing joining children, libraries' atexit hooks) must not
# hold a CI run hostage. Leftovers are named on stderr (a test that leaks is a bug to fix), child
# processes still alive are stopped by PID, and if the interpreter has not exited a minute later
# every thread's stack is dumped and the process exits with the tests' own status.
_EXIT_STATUS = {"status": 0}
EXIT_GRACE_S = 60.0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS["status"] = int(exitstatus)


def _child_pids() -> list[int]:
    """Direct children of this process (read from /proc: no dependency, Linux only)."""
    me, kids = os.getpid(), []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # field 4 (ppid) follows the parenthesised command name, which may contain spaces
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            kids.append(int(entry))
    return kids


def _exit_watchdog(status: int) -> None:
    time.sleep(EXIT_GRACE_S)
    sys.__stderr__.write(
        f"[conftest] the interpreter did not exit {EXIT_GRACE_S:.0f} s after the summary; "
        "stacks of every thread follow, then exit with the tests' status\n"
    )
    faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
    sys.__stderr__.flush()
    os._exit(status)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    status = _EXIT_STATUS["status"]
    threads = [
        t for t in threading.enumerate()
        if t is not threading.main_thread() and t.is_alive() and not t.daemon
    ]  # fmt: skip
    if threads:
        names = ", ".join(t.name for t in threads)
        sys.__stderr__.write(f"[conftest] non-daemon threads alive after the suite: {names}\n")
    for pid in _child_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")[:200]
            sys.__stderr__.write(f"[conftest] stopping child process {pid} left running: {cmd}\n")
            os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    threading.Thread(
        target=_exit_watchdog, args=(status,), name="exit-watchdog", daemon=True
    ).start()
