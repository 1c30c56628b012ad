"""Shared fixtures: the bundled real-audio sample corpora and helpers for subprocess tests."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLED_CORPORA = REPO / "tests" / "fixtures" / "corpora"
PYTHON = sys.executable


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
