"""gs:// end to end against a GCS JSON API on loopback (gcp-storage-emulator in its own
process, real HTTP, real gcsfs; tests/fixtures/gcs.py): the training loader streams and checks
a shard set, a flipped byte is caught, verify_shards.py reads the remote set, a bad set is one
clear error, and checkpoints sync to the bucket and resume from it. The same code paths as
s3:// (dataprep.core.storage is the one owner of remote I/O); only the filesystem differs.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from s3_sets import upload_tree
from test_checkpoint_sync_s3 import save_steps
from test_loader_s3 import _keys, _loader

from dataprep.core import storage
from model.checkpoint import CHECKPOINTS, resume_point, verify_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gs_set(gcs_module, local_set: Path) -> str:
    uri = gcs_module.bucket("polyclap-set") + "/demo"
    upload_tree(local_set, uri)
    return uri


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_streams_the_same_batches_as_local(gs_set, local_set, num_workers):
    kw = {"num_workers": num_workers, "rank": 0, "world_size": 2}
    want = _keys(_loader(local_set / "train", **kw))
    assert _keys(_loader(f"{gs_set}/train", **kw)) == want and len(want) >= 4


def test_flipped_byte_is_skipped_and_a_bad_set_named(gcs_module, local_set, caplog):
    uri = gcs_module.bucket("polyclap-flipped") + "/demo"
    upload_tree(local_set, uri)
    name = "shard-000001.tar"
    data = bytearray(storage.read_bytes(f"{uri}/train/{name}"))
    data[len(data) // 2] ^= 0x01
    storage.write_bytes(f"{uri}/train/{name}", bytes(data))
    caplog.set_level(logging.WARNING, logger="dataprep.loader")
    ld = _loader(f"{uri}/train", train=False)
    _keys(ld)
    assert ld.stats["corrupt_shards"] == 1 and ld.stats["skipped_samples"] == 12
    assert any(name in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records)
    storage.remove(f"{uri}/train/shards.json")
    with pytest.raises(FileNotFoundError, match=f"{uri}/train is not a finished shard set"):
        _loader(f"{uri}/train")


def test_verify_shards_reads_the_remote_set(gcs_module, gs_set, local_set, subprocess_env):
    """The remote set gets the same verdict as its local original, line for line (this set of
    the loader tests has no parquet index, so both name that problem and exit 1)."""
    env = {**subprocess_env, **gcs_module.env}

    def verify(where: str | Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "pipelines/verify_shards.py", str(where)], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    remote, local = verify(gs_set), verify(local_set)
    assert remote.returncode == local.returncode == 1, remote.stdout + remote.stderr
    assert remote.stdout.replace(gs_set, "SET") == local.stdout.replace(str(local_set), "SET")
    assert "problem: train/index.parquet missing" in remote.stdout


def test_checkpoints_sync_prune_and_resume(gcs_module, tmp_path):
    sync = gcs_module.bucket("polyclap-runs") + "/a"
    save_steps(tmp_path / "node-1", sync, [1, 2, 3], keep_last=2)
    assert storage.folders(f"{sync}/checkpoints") == ["step-00000002", "step-00000003"]
    ckpt = resume_point(tmp_path / "node-2", sync)  # an empty disk resumes from the bucket
    assert ckpt == tmp_path / "node-2" / CHECKPOINTS / "step-00000003"
    assert verify_checkpoint(ckpt)["step"] == 3
