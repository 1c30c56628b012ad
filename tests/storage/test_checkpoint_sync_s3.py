"""Checkpoints in a bucket (``train.sync_to``) against a real S3 API on loopback (moto server,
real s3fs): the bucket keeps the newest ``sync_keep_last``, and a run with an empty or older
``--out`` resumes from the bucket, every file checked.

The checkpoints are written by the production ``model.checkpoint.save_checkpoint`` in one
process; the engine is a STAND-IN that writes one weights file where DeepSpeed writes its own
(the real engine, launcher and a resume from the bucket run in
tests/storage/test_pretrain_s3.py, marked slow).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dataprep.core import storage
from dataprep.core.atomic import sha256_file
from model.checkpoint import (
    CHECKPOINTS,
    latest_checkpoint,
    resume_point,
    save_checkpoint,
    verify_checkpoint,
)
from model.config import ExperimentConfig


class _Engine:
    """Writes what DeepSpeed would under ``<root>/<tag>/`` (one file, step-dependent bytes)."""

    def save_checkpoint(self, root: str, tag: str, client_state: dict, save_latest: bool) -> None:
        d = Path(root) / tag
        d.mkdir(parents=True, exist_ok=True)
        (d / "mp_rank_00_model_states.pt").write_bytes(f"weights {client_state}".encode() * 500)


def save_steps(out: Path, sync: str, steps: list[int], keep_last: int = 2, **train) -> None:
    cfg = ExperimentConfig.model_validate({"train": {"sync_to": sync, **train}})
    for step in steps:
        save_checkpoint(
            _Engine(), out, step, trainer_state={"step": step, "rng": {}}, cfg=cfg,
            tokenizer_path=None, keep_last=keep_last,
        )  # fmt: skip


def _synced(sync: str) -> list[str]:
    return [n for n in storage.folders(f"{sync}/checkpoints") if n.startswith("step-")]


def test_bucket_keeps_the_newest_sync_keep_last(s3, tmp_path: Path) -> None:
    sync = s3.bucket("runs") + "/a"
    save_steps(tmp_path / "run", sync, [1, 2, 3], keep_last=2)  # default: as many as keep_last
    assert _synced(sync) == ["step-00000002", "step-00000003"]
    assert storage.read_bytes(f"{sync}/checkpoints/latest") == b"step-00000003"
    assert not storage.exists(f"{sync}/checkpoints/step-00000001/synced.json")
    every = s3.bucket("runs-all") + "/a"
    save_steps(tmp_path / "run-all", every, [1, 2, 3], keep_last=1, sync_keep_last=0)  # 0: all
    assert _synced(every) == ["step-00000001", "step-00000002", "step-00000003"]
    assert [p.name for p in (tmp_path / "run-all" / CHECKPOINTS).glob("step-*")] == [
        "step-00000003"
    ]  # local pruning is keep_last's alone


def test_an_empty_or_older_out_resumes_from_the_bucket(s3, tmp_path: Path) -> None:
    sync = s3.bucket("resume") + "/a"
    first = tmp_path / "node-1"
    save_steps(first, sync, [1, 2])
    want = {p.name: sha256_file(p) for p in (first / CHECKPOINTS / "step-00000002").iterdir()}

    fresh = tmp_path / "node-2"  # a replaced node: nothing on its disk
    ckpt = resume_point(fresh, sync)
    assert ckpt == fresh / CHECKPOINTS / "step-00000002"
    assert {p.name: sha256_file(p) for p in ckpt.iterdir()} == want
    assert verify_checkpoint(ckpt)["step"] == 2  # its own commit marker checks out
    assert not list((fresh / CHECKPOINTS).glob("*.pulling*"))

    older = tmp_path / "node-3"  # a stale disk: step 1 here, step 2 in the bucket
    shutil.copytree(first / CHECKPOINTS / "step-00000001", older / CHECKPOINTS / "step-00000001")
    (older / CHECKPOINTS / "latest").write_text("step-00000001")
    assert resume_point(older, sync) == older / CHECKPOINTS / "step-00000002"

    # as new as the bucket: nothing downloaded (a file changed here would be put back otherwise)
    marker = older / CHECKPOINTS / "step-00000002" / "complete.json"
    before = marker.stat().st_mtime_ns
    assert resume_point(older, sync) == older / CHECKPOINTS / "step-00000002"
    assert marker.stat().st_mtime_ns == before
    assert resume_point(tmp_path / "no-sync", None) is None  # no bucket, no checkpoint: step 0


def test_a_corrupt_or_unfinished_synced_checkpoint_is_refused(s3, tmp_path: Path) -> None:
    sync = s3.bucket("bad") + "/a"
    save_steps(tmp_path / "src", sync, [1])
    obj = f"{sync}/checkpoints/step-00000001/mp_rank_00_model_states.pt"
    data = bytearray(storage.read_bytes(obj))
    data[100] ^= 0xFF
    storage.write_bytes(obj, bytes(data))
    out = tmp_path / "dst"
    with pytest.raises(storage.StorageError, match="mp_rank_00_model_states.pt: sha256 differs"):
        resume_point(out, sync)
    assert latest_checkpoint(out) is None  # nothing that looks like a checkpoint was left

    storage.remove(f"{sync}/checkpoints/step-00000001/synced.json")  # an upload cut short
    with pytest.raises(storage.StorageError, match="did not finish"):
        resume_point(out, sync)
    assert latest_checkpoint(out) is None


def test_a_pull_another_node_finished_first_is_dropped(s3, tmp_path: Path, monkeypatch) -> None:
    """Two nodes sharing --out: each downloads into its own folder; the one that renames second
    finds the complete checkpoint in place and drops its copy instead of failing."""
    import model.sync as sync_mod

    sync = s3.bucket("race") + "/a"
    save_steps(tmp_path / "src", sync, [1])
    out = tmp_path / "shared-out"
    real = sync_mod._fetch_files

    theirs = {}

    def fetch_then_lose_the_race(prefix, files, dest):
        real(prefix, files, dest)
        done = shutil.copytree(dest, out / CHECKPOINTS / "step-00000001")  # the other node's
        theirs["inode"] = (Path(done) / "complete.json").stat().st_ino

    monkeypatch.setattr(sync_mod, "_fetch_files", fetch_then_lose_the_race)
    ckpt = resume_point(out, sync)
    assert ckpt == out / CHECKPOINTS / "step-00000001" and verify_checkpoint(ckpt)["step"] == 1
    # the other node may already be loading its copy: it is left in place, not replaced
    assert (ckpt / "complete.json").stat().st_ino == theirs["inode"]
    assert not list((out / CHECKPOINTS).glob("*.pulling*"))
