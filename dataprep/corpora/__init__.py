"""Corpus readers: one module per public-corpus layout, one explicit registry.

A reader is a function ``(CorpusConfig) -> Iterator[SampleRef | Reject]``. It parses metadata
only (never decodes audio), resolves audio paths through fsspec, and yields a ``Reject`` (stage
``reader``) for a row it cannot use (missing file, invalid metadata, path escaping the root).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from dataprep.core.config import ConfigError, CorpusConfig
from dataprep.core.sample import Reject, SampleRef

Reader = Callable[[CorpusConfig], Iterator[SampleRef | Reject]]
READERS: dict[str, Reader] = {}


def register(name: str) -> Callable[[Reader], Reader]:
    def deco(fn: Reader) -> Reader:
        if name in READERS and READERS[name] is not fn:
            raise ValueError(f"reader {name!r} registered twice")
        READERS[name] = fn
        return fn

    return deco


def _load_all() -> None:
    # Importing the modules fills READERS; listed explicitly, no import magic.
    from dataprep.corpora import (  # noqa: F401
        audiocaps,
        clotho,
        commonvoice,
        cremad,
        esc50,
        generic,
        librispeech,
        mls,
        nemo,
        ravdess,
        speechcommands,
        urbansound8k,
    )


def get_reader(name: str) -> Reader:
    _load_all()
    if name not in READERS:
        raise ConfigError(f"unknown reader {name!r}; known readers: {sorted(READERS)}")
    return READERS[name]


def read_corpus(cfg: CorpusConfig) -> Iterator[SampleRef | Reject]:
    """All items of one configured corpus (at most ``cfg.max_items`` SampleRefs)."""
    reader = get_reader(cfg.reader)
    n = 0
    for item in reader(cfg):
        if isinstance(item, SampleRef):
            if cfg.max_items is not None and n >= cfg.max_items:
                break
            n += 1
        yield item
