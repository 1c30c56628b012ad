"""Build progress: a tqdm counter whose refreshes become log lines.

Log lines (not a redrawn bar) read well in ``ray job logs`` and in a plain terminal alike; tqdm
keeps the rate, the ETA and the refresh interval.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from tqdm import tqdm

log = logging.getLogger("polyclap.build")

BAR_FORMAT = "shards {n_fmt}/{total_fmt} | {desc} | ETA {remaining}"


class _LogLines:
    """A file-like sink for tqdm: each refresh becomes one log record."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def write(self, text: str) -> None:
        line = text.strip("\r\n ")
        if line:
            self.logger.info("%s", line)

    def flush(self) -> None:
        pass


class BuildProgress:
    """Shards done, samples/s, audio hours and the commonest reject reasons."""

    def __init__(self, total: int, every_s: float = 5.0) -> None:
        self.samples = 0
        self.audio_s = 0.0
        self.reasons: Counter[str] = Counter()
        self.bar = tqdm(
            total=total,
            desc="0 samples",
            file=_LogLines(log),
            mininterval=every_s,
            bar_format=BAR_FORMAT,
            ascii=True,
            leave=False,  # close() logs the last state itself, once
            disable=False,
        )

    def update(self, summary: dict[str, Any]) -> None:
        self.samples += summary["samples"]
        self.audio_s += summary["audio_s"]
        self.reasons.update(summary.get("reject_reasons", {}))
        elapsed = self.bar.format_dict["elapsed"]
        rate = self.samples / elapsed if elapsed > 0 else 0.0
        rej = ", ".join(f"{k}={v}" for k, v in self.reasons.most_common(6)) or "none"
        self.bar.set_description_str(
            f"{self.samples} samples ({rate:.1f}/s) | {self.audio_s / 3600:.3f} h audio "
            f"| rejects: {rej}",
            refresh=False,
        )
        self.bar.update(1)

    def close(self) -> None:
        if self.bar.last_print_n < self.bar.n:
            self.bar.refresh()
        self.bar.close()
