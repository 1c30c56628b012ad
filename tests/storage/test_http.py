"""Shard sets and eval sets read over ``http://`` (fsspec's HTTP filesystem, real HTTP): a
static file server on loopback, started by the test over local copies and stopped by its handle.
Python's ``http.server`` (index pages without sizes, no Range support) is the plainest server
such a read can meet."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import test_consumers_s3 as consumers

from dataprep.core import storage
from dataprep.core.config import FeatureConfig
from dataprep.loader import ShardLoader

# the fixtures and helpers of the bucket tests, shared (pytest finds fixtures by module name)
export, report_set = consumers.export, consumers.report_set
_fold5, _in_process, _task_file = consumers._fold5, consumers._in_process, consumers._task_file


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # one stderr line per request otherwise
        pass


@pytest.fixture(scope="module")
def http_root(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """``(base URL, served folder)``; the server thread is shut down and joined at the end."""
    folder = tmp_path_factory.mktemp("served")
    handler = functools.partial(_Quiet, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def served_set(http_root, report_set) -> tuple[str, Path]:
    """``(URL, local folder)`` of the same shard set, served and on disk."""
    import shutil

    base, folder = http_root
    shutil.copytree(report_set, folder / "set")
    return f"{base}/set", report_set


def _keys(split_dir, **kw) -> list[list[str]]:
    ld = ShardLoader(split_dir, features=FeatureConfig(), max_frames=128, batch_size=4, seed=3,
                     **kw)  # fmt: skip
    return [list(b["keys"]) for b in ld.iter_epoch()]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_over_http_gives_the_local_batches(served_set, num_workers):
    url, local = served_set
    kw = {"num_workers": num_workers, "rank": 0, "world_size": 2}
    want = _keys(local / "train", **kw)
    assert _keys(f"{url}/train", **kw) == want and len(want) >= 4


def test_quality_report_over_http_equals_the_local_one(served_set):
    url, local_dir = served_set
    local, remote = _in_process(local_dir), _in_process(url)
    assert remote.pop("shards_dir") == url and local.pop("shards_dir") == str(local_dir)
    assert remote == local


@pytest.mark.slow  # two evaluate runs (~1 min on a busy 2-core box); the S3 one is not slow
def test_evaluate_an_eval_set_over_http(http_root, export, corpora_root, tmp_path):
    from jobs.evaluate import main

    base, folder = http_root
    local_root = _fold5(corpora_root, folder / "esc50")
    results = []
    for name, root in (("http", f"{base}/esc50"), ("local", str(local_root))):
        out = tmp_path / f"{name}.json"
        argv = ["--checkpoint", str(export), "--out", str(out), "--no-random-init", "--tasks",
                str(_task_file(tmp_path / name, root))]  # fmt: skip
        assert main(argv) == 0
        results.append(json.loads(out.read_text())["tasks"]["esc50_zero_shot"])
    assert results[0]["metrics"] == results[1]["metrics"] and results[0]["metrics"]


def test_bad_http_sets_are_clear(http_root, monkeypatch):
    base, _ = http_root
    with pytest.raises(FileNotFoundError, match=f"{base}/nothing is not a finished shard set"):
        ShardLoader(f"{base}/nothing", features=FeatureConfig(), max_frames=128, batch_size=4)
    monkeypatch.setattr(storage, "BACKOFF_S", (0.05, 0.1))
    with pytest.raises(storage.StorageUnavailable, match="127.0.0.1:9/set/shards.json: storage"):
        storage.read_json("http://127.0.0.1:9/set/shards.json")
