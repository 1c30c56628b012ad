"""Helpers of the object-storage tests (a plain module, not a second ``conftest``: two modules
named ``conftest`` would shadow each other in ``from conftest import ...``). The shard set they
copy into a bucket of the loopback S3 server is the ``local_set`` fixture in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

from dataprep.core import storage


def upload_tree(local: Path, uri: str) -> None:
    """Every file under ``local`` to the same relative key under ``uri``."""
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.upload(f, storage.join(uri, *f.relative_to(local).parts))
