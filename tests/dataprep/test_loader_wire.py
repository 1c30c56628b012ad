"""Batches leave the DataLoader workers through the shared-memory ring (dataprep/loader/wire.py).

Real shards of bundled audio (test_loader.make_shards), real forked DataLoader workers. The ring
must give exactly the batches of the in-process loader and of the pipe, be what actually carries
the arrays, fall back to the pipe for an array that does not fit, and never let a worker
overwrite a slot the main process has not copied out.
"""

from __future__ import annotations

import multiprocessing
import queue
from pathlib import Path

import numpy as np
import pytest
import torch
from test_loader import _loader, make_shards

from dataprep.loader import iter_shard_texts, wire
from dataprep.loader import loader as loader_mod
from dataprep.loader.wire import BatchRing, ShmArray
from model.tokenizer import Tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, corpora_root: Path) -> Path:
    out = tmp_path_factory.mktemp("wire")
    make_shards(corpora_root, out, n_shards=4, limit=40)
    return out


@pytest.fixture(scope="module")
def tokenizer(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    out = tmp_path_factory.mktemp("tok") / "tok.model"
    train_tokenizer(iter_shard_texts(root / "train"), out, vocab_size=300)
    return Tokenizer(out)


def _epoch(ld) -> list[dict]:
    return list(ld.iter_epoch())


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], torch.Tensor):
                assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k
            else:
                assert x[k] == y[k], k


@pytest.fixture()
def takes(monkeypatch) -> list[int]:
    """Per batch taken in the main process: how many of its arrays came through the ring."""
    seen: list[int] = []
    real = BatchRing.take

    def counting(self, batch):
        seen.append(sum(isinstance(v, ShmArray) for v in batch.values()))
        return real(self, batch)

    monkeypatch.setattr(BatchRing, "take", counting)
    return seen


def _piped(root, tokenizer, **kw) -> list[dict]:
    """The same 2-worker epoch with the ring off: every batch through the pipe."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BatchRing, "for_workers", classmethod(lambda cls, *a: None))
        return _epoch(_loader(root, tokenizer, num_workers=2, drop_last=False, **kw))


def test_ring_batches_equal_pipe_batches(root, tokenizer, takes) -> None:
    piped = _piped(root, tokenizer)
    assert takes == []  # no ring: the pipe carried everything
    ring = _epoch(_loader(root, tokenizer, num_workers=2, drop_last=False))
    _same(piped, ring)
    # mel, mel_lengths, groups, duration_s, ids, mask: all through the ring, for every batch
    batches = [n for n in takes if n]
    assert len(batches) == len(ring) and set(batches) == {6}
    # and the same samples as the in-process loader (whose one virtual worker orders them
    # differently)
    inproc = _epoch(_loader(root, tokenizer, num_workers=0, drop_last=False))
    mels = {k: m for b in inproc for k, m in zip(b["keys"], b["mel"])}
    assert sorted(mels) == sorted(k for b in ring for k in b["keys"])
    assert all(torch.equal(mels[k], m) for b in ring for k, m in zip(b["keys"], b["mel"]))


def test_an_array_too_big_for_its_slot_takes_the_pipe(root, tokenizer, takes) -> None:
    ref = _piped(root, tokenizer)
    with pytest.MonkeyPatch.context() as mp:
        # a slot smaller than one mel batch: the mel goes by pipe, the small arrays by the ring
        mp.setattr(loader_mod, "slot_bytes", lambda *a: 256)
        got = _epoch(_loader(root, tokenizer, num_workers=2, drop_last=False))
    _same(ref, got)
    assert takes and all(0 < n < 6 for n in takes if n)


def test_resume_with_the_ring_gives_the_same_batches(root, tokenizer, takes) -> None:
    full = [b["keys"] for b in _epoch(_loader(root, tokenizer, num_workers=2))]
    ld = _loader(root, tokenizer, num_workers=2)
    it = ld.iter_epoch()
    head = [next(it)["keys"] for _ in range(5)]
    state = ld.state_dict()
    it.close()
    resumed = _loader(root, tokenizer, num_workers=2)
    resumed.load_state_dict(state)
    assert head + [b["keys"] for b in resumed.iter_epoch()] == full
    assert any(takes)


def _producer(ring: BatchRing, out: multiprocessing.Queue) -> None:
    for i in range(3):
        out.put((i, ring.put(0, i, {"x": np.full(1000, i, dtype=np.float32), "i": i})))


def test_a_worker_waits_until_its_slot_was_copied_out() -> None:
    ring = BatchRing(workers=1, slots=2, slot_size=8192, consumed=[0])
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    p = ctx.Process(target=_producer, args=(ring, out), daemon=True)
    p.start()
    try:
        first = [out.get(timeout=30) for _ in range(2)]  # two slots: two batches without waiting
        with pytest.raises(queue.Empty):  # the third needs slot 0, not yet copied out
            out.get(timeout=1.0)
        b0 = ring.take(first[0][1])
        assert torch.equal(b0["x"], torch.zeros(1000)) and b0["i"] == 0
        ring.ack(0, 1)
        i, third = out.get(timeout=30)
        assert i == 2 and torch.equal(ring.take(third)["x"], torch.full((1000,), 2.0))
        assert torch.equal(ring.take(first[1][1])["x"], torch.ones(1000))  # slot 1 untouched
    finally:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
        ring.close()
    assert p.exitcode == 0


def test_no_ring_unless_the_workers_fork(monkeypatch) -> None:
    assert BatchRing.for_workers(2, 2, 4096, [0, 0]) is not None  # Linux default: fork
    assert BatchRing.for_workers(0, 2, 4096, []) is None
    monkeypatch.setattr(wire.multiprocessing, "get_start_method", lambda allow_none=False: "spawn")
    assert BatchRing.for_workers(2, 2, 4096, [0, 0]) is None
