"""The loader: composes the stages per worker, hands batches out, and holds the resume state."""

from __future__ import annotations

import atexit
import copy
import os
import signal
import weakref
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dataprep.core.config import FeatureConfig, LoaderConfig, SamplingConfig
from dataprep.loader.batch import Tokenize, batches, collate, shuffled
from dataprep.loader.errors import COUNTERS, ErrorPolicy
from dataprep.loader.read import read_segments
from dataprep.loader.sample import prepare_sample, stable_hash
from dataprep.loader.sampling import (
    NO_LANG,
    DrawPlan,
    open_plan,
    shares,
    weighted_segments,
)
from dataprep.loader.shardset import ShardSet, check_shard_features, epoch_segments
from dataprep.loader.wire import BatchRing, from_wire, slot_bytes, to_wire

__all__ = ["LoaderSpec", "ShardLoader", "Tokenize"]


@dataclass
class LoaderSpec:
    """Everything a worker needs; picklable."""

    shard_set: ShardSet
    features: FeatureConfig
    fingerprint: str | None
    max_frames: int
    batch_size: int
    tokenize: Tokenize | None
    rank: int
    world_size: int
    num_workers: int
    seed: int
    train: bool
    shuffle_buffer: int
    bucket: bool
    bucket_batches: int
    pad_multiple: int
    drop_last: bool
    verify: bool = True
    policy: ErrorPolicy = field(default_factory=ErrorPolicy)
    draws: DrawPlan | None = None  # a weighted epoch (loader.sampling); None: each sample once
    cache_dir: str | None = None  # local copies of checked remote shards (read.py)
    transcripts: bool = False  # CALM with the transcript: tr_ids/tr_mask (sample.calm_transcript)


class _EpochDataset(IterableDataset):
    """One epoch of one rank; each DataLoader worker plays a (rotated) virtual worker.

    Each yielded item carries ``_stats``, the error counts accrued since the previous item, so
    the main process counts exactly the events of the batches it consumed; on resume the counts
    of the regenerated (skipped) batches are dropped, as they were counted before the checkpoint.
    """

    def __init__(
        self, spec: LoaderSpec, epoch: int, skip: list[int], done: list[bool], rotation: int
    ) -> None:
        self.spec, self.epoch, self.skip, self.done, self.rotation = (
            spec,
            epoch,
            skip,
            done,
            rotation,
        )
        self.wire = False  # batches leave a worker process as numpy (wire.py)
        self.ring: BatchRing | None = None  # ... through shared memory, when the workers fork

    def _virtual_worker(self) -> int:
        info = get_worker_info()
        phys = info.id if info is not None else 0
        return (phys + self.rotation) % max(1, self.spec.num_workers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        spec, v = self.spec, self._virtual_worker()
        if self.done[v]:
            yield {"_end": v, "_stats": {}}
            return
        policy = copy.deepcopy(spec.policy)
        policy.drain()
        rng = np.random.default_rng([spec.seed, self.epoch, spec.rank, v])
        stream = self._samples(v, policy)
        if spec.train and spec.shuffle_buffer > 1:
            stream = shuffled(stream, spec.shuffle_buffer, rng)
        for i, batch in enumerate(batches(spec, stream, rng)):
            if i < self.skip[v]:
                # consumed before the checkpoint: regenerated to keep the RNG in step
                policy.drain()
                continue
            out = collate(spec, batch)
            if self.ring is not None:
                out = self.ring.put(v, i, out)
            elif self.wire:
                out = to_wire(out)
            out["_worker"], out["_index"], out["_stats"] = v, i, policy.drain()
            yield out
        yield {"_end": v, "_stats": policy.drain()}

    def _segments(self, v: int) -> list[tuple[Any, ...]]:
        spec = self.spec
        split = {
            "epoch": self.epoch, "rank": spec.rank, "world_size": spec.world_size, "worker": v,
            "num_workers": max(1, spec.num_workers),
        }  # fmt: skip
        if spec.draws is not None:
            return list(weighted_segments(spec.draws, spec.shard_set.shards, **split))
        return list(
            epoch_segments(spec.shard_set.shards, seed=spec.seed, shuffle=spec.train, **split)
        )

    def _samples(self, v: int, policy: ErrorPolicy) -> Iterator[dict[str, Any]]:
        spec = self.spec
        read = read_segments(spec.shard_set, self._segments(v), policy, spec.verify, spec.cache_dir)
        for name, key, repeat, members in read:
            try:
                yield prepare_sample(spec, self.epoch, key, members, repeat)
            except (ValueError, OSError, UnicodeDecodeError) as err:
                policy.bad_sample(name, key, err)


def _identity(item: Any) -> Any:
    # the DataLoader's default (``default_convert``) would turn the numpy arrays back into
    # tensors inside the worker
    return item


# DataLoader iterators whose workers may still run (see _stop_workers)
_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()


def _stop_workers(items: Any) -> None:
    """Stop a DataLoader iterator's worker processes now (what its ``__del__`` would do).

    The workers ignore SIGTERM (:func:`_worker_init`), and ``multiprocessing``'s exit hook stops
    daemonic children with SIGTERM and then joins them: an iterator still alive at exit (held by
    an error's traceback, or a generator a caller still references) made the interpreter wait
    for them forever after a clear error had been printed (a CI run hung an hour after its last
    test, on the "S3 endpoint gone mid-epoch" test).
    """
    ring = getattr(items, "batch_ring", None)
    if ring is not None:
        ring.stop()  # a worker waiting for a slot leaves instead of outliving the shutdown
    shutdown = getattr(items, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    _LIVE.discard(items)


@atexit.register  # registered after multiprocessing's own hook, so it runs before it
def _stop_all_workers() -> None:
    for items in list(_LIVE):
        _stop_workers(items)


def _worker_init(_: int) -> None:
    # Preemption: SIGTERM goes to the whole process group; the trainer checkpoints, so its
    # workers must not die first (the DataLoader would raise). They exit with their parent.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


class ShardLoader:
    """Batches of one rank over a shard split, with ``state_dict`` for exact mid-epoch resume.

    ``iter_epoch()`` yields the rest of the current epoch; ``iter(loader)`` is endless.
    ``verify`` checks each shard's size and sha256 against ``shards.json`` before use;
    ``error_policy`` decides what a damaged shard or sample causes (default: log, count in
    :attr:`stats`, skip). ``split_dir`` may be a remote URI (``s3://``, ``gs://``,
    ``http(s)://``): its listing is checked against ``shards.json`` up front, and checked shards
    are kept in ``cache_dir`` when given.
    """

    def __init__(
        self,
        split_dir: str | os.PathLike[str],
        *,
        features: FeatureConfig,
        max_frames: int,
        batch_size: int,
        tokenize: Tokenize | None = None,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        train: bool = True,
        shuffle_buffer: int = 256,
        bucket: bool = False,
        bucket_batches: int = 8,
        pad_multiple: int = 1,
        drop_last: bool = True,
        check_features: bool = True,
        verify: bool = True,
        error_policy: ErrorPolicy | None = None,
        prefetch_factor: int = 2,
        pin_memory: bool = False,
        sampling: SamplingConfig | None = None,
        cache_dir: str | None = None,
        transcripts: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        shard_set = ShardSet.open(split_dir)
        fingerprint = check_shard_features(shard_set, features) if check_features else None
        weighted = train and sampling is not None and sampling.by != "none"
        draws = open_plan(shard_set, sampling, seed) if weighted else None  # type: ignore[arg-type]
        self.spec = LoaderSpec(
            shard_set=shard_set, features=features, fingerprint=fingerprint, max_frames=max_frames,
            batch_size=batch_size, tokenize=tokenize, rank=rank, world_size=world_size,
            num_workers=num_workers, seed=seed, train=train, shuffle_buffer=shuffle_buffer,
            bucket=bucket, bucket_batches=bucket_batches, pad_multiple=pad_multiple,
            drop_last=drop_last, verify=verify, policy=error_policy or ErrorPolicy(), draws=draws,
            cache_dir=cache_dir, transcripts=transcripts,
        )  # fmt: skip
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self.epoch = 0
        self._stats: Counter[str] = Counter()
        self._drawn: Counter[str] = Counter()  # consumed samples per corpus/<c>, lang/<l>
        self._reset_epoch_state()

    @classmethod
    def from_config(
        cls, config: LoaderConfig, split_dir: str | os.PathLike[str], *,
        features: FeatureConfig, tokenize: Tokenize | None, max_frames: int, batch_size: int,
        pad_multiple: int = 1, seed: int = 0, rank: int = 0, world_size: int = 1,
        train: bool = True, transcripts: bool = False,
    ) -> ShardLoader:  # fmt: skip
        """The loader of a ``loader:`` section. What the model dictates (crop length, padding
        multiple, tokenization, transcripts for CALM) is passed in by the caller; this module
        never reads it."""
        return cls(
            split_dir, features=features, max_frames=max_frames, batch_size=batch_size,
            tokenize=tokenize, rank=rank, world_size=world_size, num_workers=config.num_workers,
            seed=seed, train=train, shuffle_buffer=config.shuffle_buffer,
            bucket=config.bucket_by_length, pad_multiple=pad_multiple, drop_last=train,
            pin_memory=torch.cuda.is_available(),  # page-locked batches: async host-to-GPU copies
            sampling=config.sampling,
            cache_dir=config.cache_dir,
            transcripts=transcripts,
        )  # fmt: skip

    def reset(self, epoch: int = 0) -> None:
        """Start ``epoch`` from its beginning (e.g. the same validation pass every time)."""
        self.epoch = epoch
        self._reset_epoch_state()

    def _reset_epoch_state(self) -> None:
        n = max(1, self.spec.num_workers)
        self._consumed = [0] * n
        self._done = [False] * n

    @property
    def num_samples(self) -> int:
        """Samples of the whole split (all ranks), per shards.json minus excluded keys."""
        return self.spec.shard_set.num_samples

    @property
    def num_draws(self) -> int:
        """Samples of one epoch of the whole split (all ranks): draws when weighted."""
        d = self.spec.draws
        return d.epoch_samples if d is not None else self.num_samples

    def draw_shares(self) -> dict[str, float]:
        """The achieved share of consumed samples per corpus and language (all epochs, this
        rank): ``draws_corpus_<name>``, ``draws_lang_<code>``, as the trainer logs them."""
        return shares(self._drawn)

    def expected_shares(self) -> dict[str, float]:
        """The share of draws each corpus and language is expected to get (weighted) or has
        in the data (unweighted: None)."""
        d = self.spec.draws
        return shares(Counter(d.expected_shares())) if d is not None else {}

    @property
    def stats(self) -> dict[str, int]:
        """Error counters of the batches consumed so far (all epochs, kept across resume):
        missing/corrupt shards, samples they held, bad samples (see ``errors.py``)."""
        return {k: int(self._stats[k]) for k in COUNTERS}

    def state_dict(self) -> dict[str, Any]:
        s = self.spec
        return {
            "epoch": self.epoch, "consumed": list(self._consumed), "done": list(self._done),
            "num_workers": s.num_workers, "rank": s.rank, "world_size": s.world_size,
            "seed": s.seed, "batch_size": s.batch_size, "stats": self.stats,
            "drawn": dict(self._drawn),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        s = self.spec
        for k in ("num_workers", "world_size", "seed", "batch_size", "rank"):
            if state[k] != getattr(s, k):
                raise ValueError(
                    f"loader state was saved with {k}={state[k]}, this loader has {getattr(s, k)}: "
                    f"an exact resume needs the same {k}"
                )
        self.epoch = int(state["epoch"])
        self._consumed = [int(x) for x in state["consumed"]]
        self._done = [bool(x) for x in state["done"]]
        self._stats = Counter(state.get("stats") or {})  # states saved before the counters: none
        self._drawn = Counter(state.get("drawn") or {})

    def _items(self, ds: _EpochDataset) -> Any:
        if self.spec.num_workers == 0:
            return iter(ds)
        # With pin_memory the DataLoader's pin thread pins tensors (numpy would pass unpinned)
        ds.wire = not self.pin_memory
        if ds.wire:
            s = self.spec
            width = max(-(-s.max_frames // s.pad_multiple) * s.pad_multiple, s.pad_multiple)
            itemsize = 2 if s.features.dtype == "float16" else 4
            size = slot_bytes(s.batch_size, s.features.n_mels, width, itemsize)
            ds.ring = BatchRing.for_workers(s.num_workers, self.prefetch_factor, size, ds.skip)
        return DataLoader(
            ds, batch_size=None, num_workers=self.spec.num_workers, worker_init_fn=_worker_init,
            collate_fn=_identity if ds.wire else None,
            prefetch_factor=self.prefetch_factor, pin_memory=self.pin_memory,
            # its own generator: the DataLoader draws a base seed per iterator, which would
            # otherwise advance the global torch RNG (dropout) and break exact resume
            generator=torch.Generator().manual_seed(
                stable_hash(self.spec.seed, self.epoch, self.spec.rank)
            ),
        )  # fmt: skip

    def iter_epoch(self) -> Iterator[dict[str, Any]]:
        """The remaining batches of the current epoch; the epoch counter advances at its end."""
        active = [v for v, d in enumerate(self._done) if not d]
        rotation = min(active, key=lambda v: (self._consumed[v], v)) if active else 0
        ds = _EpochDataset(self.spec, self.epoch, list(self._consumed), list(self._done), rotation)
        items = iter(self._items(ds))
        if self.spec.num_workers:
            items.batch_ring = ds.ring  # type: ignore[attr-defined]  # for _stop_workers
            _LIVE.add(items)
        try:
            yield from self._accepted(items, ds.ring)
        finally:  # an error, or the consumer stopped early: the workers go now, not at exit
            _stop_workers(items)
            if ds.ring is not None:
                ds.ring.close()
        self.epoch += 1
        self._reset_epoch_state()

    def _accepted(
        self, items: Iterator[dict[str, Any]], ring: BatchRing | None
    ) -> Iterator[dict[str, Any]]:
        """Batches in worker order, with the resume bookkeeping and counters updated."""
        for item in items:
            item = ring.take(item) if ring is not None else from_wire(item)
            self._stats.update(item.pop("_stats"))
            if "_end" in item:
                self._done[item["_end"]] = True
                continue
            v, i = item.pop("_worker"), item.pop("_index")
            if i != self._consumed[v]:
                raise RuntimeError(
                    f"loader order broken: worker {v} gave batch {i}, expected {self._consumed[v]}"
                )
            self._consumed[v] = i + 1
            if ring is not None:  # copied out: the worker may reuse the slot
                ring.ack(v, i + 1)
            self._drawn.update(f"corpus/{c}" for c in item["corpora"])
            self._drawn.update(f"lang/{x or NO_LANG}" for x in item["langs"])
            yield item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            n = 0
            resumed = any(self._consumed) or any(self._done)
            for batch in self.iter_epoch():
                n += 1
                yield batch
            if n == 0 and not resumed:
                raise RuntimeError(
                    f"rank {self.spec.rank}: an epoch of {self.spec.shard_set.split_dir} gave no "
                    f"batch of {self.spec.batch_size} (too few readable samples for this "
                    f"rank/worker split?)"
                )
