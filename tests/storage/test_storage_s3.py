"""dataprep.core.storage against a real S3 API on loopback (moto server, real HTTP, s3fs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataprep.core import storage

REPO = Path(__file__).resolve().parents[2]


def test_roundtrip_listing_and_sha(s3_module, tmp_path):
    uri = s3_module.bucket("roundtrip") + "/set/train"
    src = tmp_path / "a.tar"
    src.write_bytes(os.urandom(3 << 20))
    storage.upload(src, storage.join(uri, "a.tar"))
    storage.write_json(storage.join(uri, "x.json"), {"b": 1, "a": [1]})
    assert storage.listing(uri) == {
        "a.tar": 3 << 20,
        "x.json": len(b'{\n  "a": [\n    1\n  ],\n  "b": 1\n}\n'),
    }
    data, digest = storage.fetch(storage.join(uri, "a.tar"))
    import hashlib

    assert data == src.read_bytes() and digest == hashlib.sha256(data).hexdigest()
    assert storage.read_json(storage.join(uri, "x.json")) == {"b": 1, "a": [1]}
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(uri, "nope"))
    assert storage.listing(storage.join(uri, "nothing-here")) == {}


_UPLOADER = """
import sys
from dataprep.core import storage
storage.UPLOAD_PART = 5 << 20  # many parts: the kill lands between two of them
storage.upload(sys.argv[1], sys.argv[2])
"""


def test_sigkill_mid_upload_leaves_no_object(s3_module, tmp_path):
    """An upload killed between the parts of its multipart upload leaves no object under the
    final name (the object only appears at CompleteMultipartUpload)."""
    bucket = s3_module.bucket("killed-upload")
    big = tmp_path / "big.tar"
    big.write_bytes(os.urandom(60 << 20))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-c", _UPLOADER, str(big), f"{bucket}/x/big.tar"],
                         env=env, start_new_session=True)  # fmt: skip
    client = s3_module.client()
    deadline = time.time() + 60
    try:
        while time.time() < deadline and p.poll() is None:
            if client.list_multipart_uploads(Bucket="killed-upload").get("Uploads"):
                break
            time.sleep(0.01)
        assert p.poll() is None, "the upload finished before it could be killed"
        os.killpg(p.pid, signal.SIGKILL)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    assert client.list_multipart_uploads(Bucket="killed-upload").get("Uploads")  # begun, never done
    assert storage.listing(f"{bucket}/x") == {}
    assert not storage.exists(f"{bucket}/x/big.tar")


def test_missing_credentials_and_dead_endpoint_are_clear(s3_module, monkeypatch):
    from fixtures.s3 import forget_filesystems

    uri = s3_module.bucket("creds") + "/set"
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    forget_filesystems()
    with pytest.raises(storage.StorageError, match=f"{uri}.*no credentials"):
        storage.listing(uri)
    monkeypatch.undo()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setattr(storage, "BACKOFF_S", (0.05, 0.1))
    forget_filesystems()
    t = time.time()
    with pytest.raises(storage.StorageUnavailable, match=f"{uri}: storage unreachable after 4"):
        storage.listing(uri)
    assert time.time() - t < 60
    forget_filesystems()
