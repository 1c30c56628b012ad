"""The loader's one error policy: what a missing shard, a corrupt shard and a bad sample cause.

The default policy logs each event, counts it and skips what it affects, so training goes on
and the counters reach the trainer's metrics; ``strict=True`` raises instead (tools that must
not tolerate damage). Each worker process holds its own copy; the counts it accrues travel to
the main process with the batches (see ``ShardLoader``), so they are exact across resume.
"""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger("dataprep.loader")

# counter names, as the trainer logs them (``loader_<name>``)
MISSING_SHARDS = "missing_shards"
CORRUPT_SHARDS = "corrupt_shards"
SKIPPED_SAMPLES = "skipped_samples"  # samples of the plan never fed: missing/corrupt shards
BAD_SAMPLES = "bad_samples"  # samples read but refused (undecodable, wrong shape, non-finite)
COUNTERS = (MISSING_SHARDS, CORRUPT_SHARDS, SKIPPED_SAMPLES, BAD_SAMPLES)


class ShardCorrupt(OSError):
    """A shard whose bytes differ from its ``shards.json`` record, or that does not parse."""


class ErrorPolicy:
    """Log + count + skip (default) or raise (``strict``). Picklable."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.counts: Counter[str] = Counter()

    def drain(self) -> dict[str, int]:
        """The counts accrued since the last drain (then zero)."""
        out = {k: v for k, v in self.counts.items() if v}
        self.counts.clear()
        return out

    # A shard shared by two workers (or ranks) is skipped by each for its own range; the one
    # whose range starts at the shard's first sample (``first``) counts the shard itself.
    def shard_missing(self, name: str, samples: int, first: bool = True) -> None:
        if self.strict:
            raise FileNotFoundError(f"shard missing: {name}")
        log.error("shard missing, skipped: %s (%d samples)", name, samples)
        self.counts[MISSING_SHARDS] += int(first)
        self.counts[SKIPPED_SAMPLES] += samples

    def shard_corrupt(self, name: str, err: Exception, samples: int, first: bool = True) -> None:
        if self.strict:
            raise ShardCorrupt(f"corrupt shard {name}: {err}") from err
        log.error("corrupt shard %s, %d samples skipped: %s", name, samples, err)
        self.counts[CORRUPT_SHARDS] += int(first)
        self.counts[SKIPPED_SAMPLES] += samples

    def bad_sample(self, name: str, key: str, err: Exception) -> None:
        if self.strict:
            raise ValueError(f"bad sample {key} in {name}: {err}") from err
        log.error("bad sample %s in %s, skipped: %s", key, name, err)
        self.counts[BAD_SAMPLES] += 1
