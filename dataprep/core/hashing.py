"""Stable hashing: the one owner of "same inputs, same number, in every process and run".

Python's ``hash()`` is salted per process, so every deterministic choice in polyclap (split
assignment, shuffles, text and template draws, group ids, report sampling) derives its number
from a digest of its parts here. Parts are joined with NUL after ``str()``; the digest, width and
byte order are parameters because shards and resume states built earlier depend on each caller's
exact numbers (changing one changes shard bytes or a loader's order).
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal


def digest(*parts: Any, algo: Literal["sha1", "sha256"] = "sha1") -> bytes:
    """The digest of ``parts`` joined by NUL (each through ``str``)."""
    return hashlib.new(algo, "\x00".join(str(p) for p in parts).encode()).digest()


def stable_int(
    *parts: Any,
    algo: Literal["sha1", "sha256"] = "sha1",
    nbytes: int = 8,
    byteorder: Literal["big", "little"] = "big",
) -> int:
    """An unsigned ``8 * nbytes``-bit integer from the first ``nbytes`` of the digest."""
    return int.from_bytes(digest(*parts, algo=algo)[:nbytes], byteorder)


def stable_unit(*parts: Any) -> float:
    """A number in ``[0, 1)``, uniform over inputs (split assignment)."""
    return stable_int(*parts) / 2**64


def stable_hash(*parts: Any) -> int:
    """A non-negative 63-bit integer (fits int64: torch group ids, numpy seeds)."""
    return stable_int(*parts, byteorder="little") >> 1


def stable_seed(*parts: Any) -> int:
    """A 32-bit seed (``random.seed``, numpy, torch generators) from sha256."""
    return stable_int(*parts, algo="sha256", nbytes=4)
