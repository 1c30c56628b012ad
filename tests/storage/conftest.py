"""Helpers of the object-storage tests: shard sets made from real bundled audio, copied into a
bucket of the loopback S3 server (tests/fixtures/s3.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dataprep"))
from test_loader import make_shards

from dataprep.core import storage


def upload_tree(local: Path, uri: str) -> None:
    """Every file under ``local`` to the same relative key under ``uri``."""
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.upload(f, storage.join(uri, *f.relative_to(local).parts))


@pytest.fixture(scope="module")
def local_set(tmp_path_factory: pytest.TempPathFactory, corpora_root: Path) -> Path:
    root = tmp_path_factory.mktemp("s3set")
    make_shards(corpora_root, root, n_shards=5, limit=60)
    make_shards(corpora_root, root, n_shards=1, limit=24, split="val")
    return root
