"""How a batch leaves a DataLoader worker process: a shared-memory ring, else the pipe.

The pipe (what a DataLoader does with numpy arrays) pickles every batch, writes it through a
64 KiB pipe buffer and unpickles it in the main process: 4 copies, and the main process, the one
that also feeds the GPU, spent 1.05 of 1.79 s of a 2-worker epoch in ``read`` and
``BytesIO.write`` (profiled on ``bench/loader.py --samples 8000``: 4.2 MB float16 mel batches).
Torch's own tensor sharing makes one shared-memory file per tensor and batch and passes its
descriptor over a socket, which measured slower still.

:class:`BatchRing` is one anonymous shared mapping (``mmap(-1)``, ``MAP_SHARED``) made by the
main process *before* the workers fork, so it has no name to leak when a process is killed and
is gone when the last process exits. Each worker owns ``slots`` fixed-size slots; batch ``i`` of
virtual worker ``v`` goes to slot ``i % slots`` of ``v``'s region, and only its small
descriptor (offsets, dtypes, shapes, the Python lists) travels through the pipe. The main
process copies the arrays out and then acknowledges: ``consumed[v]`` (a counter in the same
mapping) is the number of ``v``'s batches copied out, and a worker writes batch ``i`` only once
``consumed[v] > i - slots``. That cannot deadlock: the main process takes batches in the
DataLoader's task order, and the worker of the oldest batch not yet taken only ever waits for
an older batch of its own, which was already taken. When the consumer stops early (a trainer's
last step mid-epoch), :meth:`BatchRing.stop` sets a flag in the mapping before the workers are
shut down, and a worker waiting for a slot leaves at once: the workers ignore SIGTERM, so a wait
that outlived the DataLoader's shutdown would spin on, and the process's exit hook would wait
for it forever. An array that does not fit the slot travels through the pipe as before
(correct, only slower).

Only under the ``fork`` start method (the mapping is inherited, never pickled); the ring is
``None`` otherwise and batches take the pipe. Pinned-memory loading (CUDA) keeps torch's path.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

ALIGN = 64  # bytes: each array starts on a cache line
SMALL_BYTES = 1 << 20  # per slot beyond the mel: tokens, masks, lengths (grown with the batch)


@dataclass(frozen=True)
class ShmArray:
    """Where one array of a batch lies in the ring (what the pipe carries instead of it)."""

    offset: int
    dtype: str
    shape: tuple[int, ...]


def to_wire(batch: dict[str, Any]) -> dict[str, Any]:
    """Tensors as numpy arrays: they travel pickled through the worker's pipe."""
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def from_wire(batch: dict[str, Any]) -> dict[str, Any]:
    """:func:`to_wire` undone in the main process (``torch.from_numpy``: no copy)."""
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def slot_bytes(batch_size: int, n_mels: int, max_frames: int, itemsize: int) -> int:
    """Room for the largest mel batch of a loader (``[B, n_mels, max_frames]``) and the rest."""
    return batch_size * n_mels * max_frames * itemsize + SMALL_BYTES + batch_size * 4096


class BatchRing:
    """See the module docstring; made in the main process, used by both sides after a fork."""

    def __init__(self, workers: int, slots: int, slot_size: int, consumed: list[int]) -> None:
        self.workers, self.slots = workers, slots
        self.slot_size = -(-slot_size // ALIGN) * ALIGN
        self._header = -(-8 * (workers + 1) // ALIGN) * ALIGN
        self._buf = mmap.mmap(-1, self._header + workers * slots * self.slot_size)
        head = np.frombuffer(self._buf, dtype=np.int64, count=workers + 1)
        self._consumed, self._stop = head[:workers], head[workers:]
        self._consumed[:] = consumed
        self._parent = os.getpid()

    @classmethod
    def for_workers(
        cls, workers: int, slots: int, slot_size: int, consumed: list[int]
    ) -> BatchRing | None:
        """A ring when the workers will be forked, else ``None`` (the pipe)."""
        if workers <= 0 or multiprocessing.get_start_method(allow_none=False) != "fork":
            return None
        return cls(workers, max(1, slots), slot_size, consumed)

    # -- worker side ---------------------------------------------------------------------------
    def put(self, v: int, i: int, batch: dict[str, Any]) -> dict[str, Any]:
        """Batch ``i`` of virtual worker ``v`` into its slot; returns what the pipe carries."""
        while self._consumed[v] <= i - self.slots:  # the slot's previous batch not copied out
            if self._stop[0] or os.getppid() != self._parent:  # shut down, or the main is gone
                raise SystemExit(0)
            time.sleep(0.0002)
        base = self._header + (v * self.slots + i % self.slots) * self.slot_size
        pos, out = 0, {}
        for k, val in batch.items():
            arr = val.numpy() if isinstance(val, torch.Tensor) else val
            if not isinstance(arr, np.ndarray):
                out[k] = val
                continue
            arr = np.ascontiguousarray(arr)
            if pos + arr.nbytes > self.slot_size:  # does not fit: the pipe
                out[k] = arr
                continue
            dst = np.frombuffer(self._buf, dtype=arr.dtype, count=arr.size, offset=base + pos)
            dst[:] = arr.reshape(-1)
            out[k] = ShmArray(base + pos, arr.dtype.str, arr.shape)
            pos += -(-arr.nbytes // ALIGN) * ALIGN
        return out

    # -- main side -----------------------------------------------------------------------------
    def take(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with its arrays copied out of the ring, as tensors (:func:`from_wire`)."""
        return from_wire({k: self._copy_out(v) if isinstance(v, ShmArray) else v
                          for k, v in batch.items()})  # fmt: skip

    def _copy_out(self, ref: ShmArray) -> np.ndarray:
        count = int(np.prod(ref.shape))
        src = np.frombuffer(self._buf, dtype=ref.dtype, count=count, offset=ref.offset)
        return src.reshape(ref.shape).copy()

    def ack(self, v: int, consumed: int) -> None:
        """``consumed`` batches of ``v`` are copied out: their slots may be written again."""
        self._consumed[v] = consumed

    def stop(self) -> None:
        """The workers are about to be shut down: a worker waiting for a slot leaves now."""
        self._stop[0] = 1

    def close(self) -> None:
        """Unmap now; if a view is still alive (an error's traceback), the GC unmaps later."""
        self._consumed = self._stop = np.zeros(0, dtype=np.int64)  # the views hold the buffer
        try:
            self._buf.close()
        except BufferError:
            pass
