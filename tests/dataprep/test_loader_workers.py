"""The loader's worker processes never outlive what uses them.

Its workers ignore SIGTERM (a preempted trainer checkpoints first), and multiprocessing's exit
hook stops daemonic children with SIGTERM, then joins them: before the fix, a process whose
epoch iterator was still alive at exit (a generator still referenced, or an error's traceback)
hung forever after its last line — a CI run waited an hour after its last test. Real bundled
audio in real shards (tests/dataprep/test_loader.py::make_shards), real DataLoader workers.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
from test_loader import FEATURES, make_shards

from dataprep.loader import ShardLoader

# a process that takes one batch of a 2-worker epoch and exits with the epoch generator still
# referenced by a global (as a trainer's main() holding `batches` does)
HOLD_AT_EXIT = """
import sys
from dataprep.core.config import FeatureConfig
from dataprep.loader import ShardLoader
ld = ShardLoader(sys.argv[1], features=FeatureConfig(), max_frames=128, batch_size=4, seed=3,
                 num_workers=2)
epoch = ld.iter_epoch()
next(epoch)
print("took one batch", flush=True)
"""


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory, corpora_root: Path) -> Path:
    root = tmp_path_factory.mktemp("workers")
    make_shards(corpora_root, root, n_shards=4, limit=48)
    return root / "train"


def _exploding_tokenizer(texts, langs=None):
    raise ValueError("tokenizer exploded")


def _workers() -> list[multiprocessing.Process]:
    return [p for p in multiprocessing.active_children() if p.is_alive()]


def test_a_process_holding_an_epoch_at_exit_exits(split: Path, subprocess_env) -> None:
    p = subprocess.run([sys.executable, "-c", HOLD_AT_EXIT, str(split)], env=subprocess_env,
                       capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert p.returncode == 0 and "took one batch" in p.stdout, p.stderr[-2000:]


def test_workers_stop_when_the_consumer_stops_or_the_epoch_fails(split: Path) -> None:
    before = set(_workers())
    ld = ShardLoader(split, features=FEATURES, max_frames=128, batch_size=4, seed=3, num_workers=2)
    epoch = ld.iter_epoch()
    next(epoch)
    assert len(set(_workers()) - before) == 2  # the epoch's two workers run
    epoch.close()  # the consumer stops early (max_steps mid-epoch)
    assert not set(_workers()) - before, "workers outlived a closed epoch"

    # an error raised in a worker (as storage's StorageUnavailable is) ends the epoch with it
    ld = ShardLoader(split, features=FEATURES, max_frames=128, batch_size=4, seed=3,
                     num_workers=2, tokenize=_exploding_tokenizer)  # fmt: skip
    with pytest.raises(ValueError, match="tokenizer exploded"):
        for _ in ld.iter_epoch():
            pass
    assert not set(_workers()) - before, "workers outlived a failed epoch"


def test_workers_waiting_on_a_full_batch_ring_stop_with_the_epoch(split: Path, monkeypatch) -> None:
    """A worker whose shared-memory slots (dataprep/loader/wire.py) are all unread waits for the
    consumer; when the consumer stops, it must leave at once: it ignores SIGTERM, so a wait
    that outlived the DataLoader's shutdown would leave it spinning, and the process's exit
    hook would wait for it forever."""
    import time

    from dataprep.loader.wire import BatchRing

    before = set(_workers())
    ld = ShardLoader(split, features=FEATURES, max_frames=128, batch_size=2, seed=3,
                     num_workers=2, prefetch_factor=2)  # fmt: skip
    # one slot per worker for two prefetched batches: the second waits for the consumer
    real = BatchRing.for_workers.__func__
    monkeypatch.setattr(
        BatchRing, "for_workers", classmethod(lambda cls, w, _s, size, c: real(cls, w, 1, size, c))
    )
    epoch = ld.iter_epoch()
    next(epoch)
    time.sleep(2.0)  # the workers fill their slots and wait for the consumer
    t0 = time.perf_counter()
    epoch.close()
    assert not set(_workers()) - before, "workers outlived a closed epoch"
    assert time.perf_counter() - t0 < 4.0  # left at once, not after the DataLoader's timeouts
