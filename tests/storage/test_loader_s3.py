"""The training loader over shards in a bucket of a real S3 API on loopback (moto server)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from s3_sets import upload_tree

from dataprep.core import storage
from dataprep.core.config import FeatureConfig
from dataprep.loader import ShardLoader

FEATURES = FeatureConfig()


def _loader(split_dir, **kw) -> ShardLoader:
    args = {"features": FEATURES, "max_frames": 128, "batch_size": 4, "seed": 3}
    args.update(kw)
    return ShardLoader(split_dir, **args)


def _keys(loader: ShardLoader, n: int | None = None) -> list[list[str]]:
    out = []
    for batch in loader.iter_epoch():
        out.append(list(batch["keys"]))
        if n is not None and len(out) == n:
            break
    return out


@pytest.fixture(scope="module")
def bucket_set(s3_module, local_set: Path) -> str:
    uri = s3_module.bucket("loader-set") + "/demo"
    upload_tree(local_set, uri)
    return uri


@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_batches_as_local_and_exact_resume(bucket_set, local_set, tmp_path, num_workers):
    kw = {"num_workers": num_workers, "rank": 1, "world_size": 2}
    want = _keys(_loader(local_set / "train", **kw))
    remote = _loader(f"{bucket_set}/train", cache_dir=str(tmp_path / "cache"), **kw)
    assert _keys(remote) == want and len(want) >= 4
    assert len(list((tmp_path / "cache").glob("*.tar"))) >= 3  # checked copies kept
    # resume mid-epoch from the cache-backed remote loader: the same remaining batches
    first = _loader(f"{bucket_set}/train", cache_dir=str(tmp_path / "cache"), **kw)
    head = _keys(first, 2)
    resumed = _loader(f"{bucket_set}/train", **kw)
    resumed.load_state_dict(first.state_dict())
    assert head + _keys(resumed) == want


def test_flipped_byte_in_one_object_is_skipped_with_a_warning(s3_module, local_set, caplog):
    uri = s3_module.bucket("flipped") + "/demo"
    upload_tree(local_set, uri)
    name = "shard-000002.tar"
    data = bytearray(storage.read_bytes(f"{uri}/train/{name}"))
    data[len(data) // 2] ^= 0x01
    storage.write_bytes(f"{uri}/train/{name}", bytes(data))  # same size: the listing agrees
    caplog.set_level(logging.WARNING, logger="dataprep.loader")
    ld = _loader(f"{uri}/train", train=False)
    keys = [k for b in _keys(ld) for k in b]
    assert ld.stats["corrupt_shards"] == 1 and ld.stats["skipped_samples"] == 12
    assert len(keys) == 48 - 48 % 4 or len(keys) == 48
    assert any(name in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_server_stopped_mid_epoch_is_a_clear_bounded_error(s3, local_set, num_workers, monkeypatch):
    # a stopped moto server may leave kept-alive connections that never answer: the bound is
    # ATTEMPTS x read_timeout, shortened here (forked loader workers inherit the patch)
    monkeypatch.setitem(storage.S3_CLIENT, "read_timeout", 3)
    monkeypatch.setattr(storage, "BACKOFF_S", (0.1, 0.5))
    uri = s3.bucket("stopped") + "/demo"
    upload_tree(local_set, uri)
    ld = _loader(f"{uri}/train", num_workers=num_workers, train=False)
    it = ld.iter_epoch()
    next(it)
    s3.stop()  # the endpoint goes away mid-epoch
    t = time.time()
    with pytest.raises(
        storage.StorageUnavailable,
        match=rf"{uri}/train/shard-0000\d\d.tar: "
        r"storage unreachable after 4 attempts",
    ):
        for _ in it:
            pass
    assert time.time() - t < 60, "retries must be bounded"


def test_bad_remote_sets_fail_before_use_naming_the_uri(s3_module, local_set):
    uri = s3_module.bucket("bad-sets")
    upload_tree(local_set / "train", f"{uri}/no-json/train")
    storage.remove(f"{uri}/no-json/train/shards.json")
    with pytest.raises(FileNotFoundError, match=f"{uri}/no-json/train is not a finished shard set"):
        _loader(f"{uri}/no-json/train")
    upload_tree(local_set / "train", f"{uri}/short/train")
    storage.remove(f"{uri}/short/train/shard-000004.tar")
    with pytest.raises(
        ValueError,
        match=f"{uri}/short/train: the listing disagrees with "
        "shards.json for 1 of 5 shard.*shard-000004.tar missing",
    ):
        _loader(f"{uri}/short/train")
