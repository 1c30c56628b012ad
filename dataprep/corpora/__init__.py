"""Corpus readers: one module per public-corpus layout, one explicit registry.

A reader is a function ``(CorpusConfig) -> Iterator[SampleRef | Reject]``. It parses metadata
only (never decodes audio), resolves audio paths through fsspec, and yields a ``Reject`` (stage
``reader``) for a row it cannot use (missing file, invalid metadata, path escaping the root).
Each reader registers a typed options model (:class:`_common.ReaderOptions`);
:func:`validate_corpora` checks every configured corpus against it when a config loads, before
any work starts (``dataprep.core.config`` cannot import the readers: it is the layer below).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dataprep.core.config import ConfigError, CorpusConfig
from dataprep.core.sample import Reject, SampleRef
from dataprep.corpora._common import ReaderOptions, parse_options

log = logging.getLogger(__name__)

Reader = Callable[[CorpusConfig], Iterator[SampleRef | Reject]]
READERS: dict[str, Reader] = {}
READER_OPTIONS: dict[str, type[ReaderOptions]] = {}


def register(name: str, options: type[ReaderOptions]) -> Callable[[Reader], Reader]:
    """Register a reader under ``name`` with the model its ``options`` must satisfy."""

    def deco(fn: Reader) -> Reader:
        if name in READERS and READERS[name] is not fn:
            raise ValueError(f"reader {name!r} registered twice")
        READERS[name] = fn
        READER_OPTIONS[name] = options
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
        mswc,
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


def validate_corpus(cfg: CorpusConfig) -> ReaderOptions:
    """The corpus's reader exists and its options are valid; :class:`ConfigError` otherwise."""
    get_reader(cfg.reader)
    return parse_options(cfg, READER_OPTIONS[cfg.reader])


def validate_corpora(cfg: Any) -> None:
    """Check every corpus of an experiment config (``build.corpora`` and ``build.eval_corpora``)
    or of an iterable of :class:`CorpusConfig`; raises one :class:`ConfigError` listing all."""
    corpora: Iterable[CorpusConfig]
    if isinstance(cfg, CorpusConfig):
        corpora = (cfg,)
    elif hasattr(cfg, "build"):
        corpora = (*cfg.build.corpora, *cfg.build.eval_corpora)
    else:
        corpora = cfg
    problems = []
    for corpus in corpora:
        try:
            validate_corpus(corpus)
        except ConfigError as err:
            problems.append(str(err))
    if problems:
        raise ConfigError("\n".join(problems))


def read_corpus(cfg: CorpusConfig) -> Iterator[SampleRef | Reject]:
    """All items of one configured corpus (at most ``cfg.max_items`` SampleRefs).

    A reader that fails on its metadata (a metadata file that is not UTF-8, unreadable, a
    symlink out of the root...) ends as one ``unreadable_metadata`` reject naming the corpus,
    after the items it had yielded: the build goes on with the other corpora instead of dying
    with a traceback. A configuration error (unknown option) still stops the run.
    """
    reader = get_reader(cfg.reader)
    n = 0
    items = reader(cfg)
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - one boundary: a recorded reject, not a crash
            log.warning("corpus %s: reading stopped: %s: %s", cfg.name, type(err).__name__, err)
            yield Reject(
                source=f"{cfg.name}:{cfg.root}",
                stage="reader",
                reason="unreadable_metadata",
                detail=f"reading {cfg.reader} corpus {cfg.name!r} stopped after {n} items: "
                f"{type(err).__name__}: {err}",
                corpus=cfg.name,
            )
            return
        if isinstance(item, SampleRef):
            if cfg.max_items is not None and n >= cfg.max_items:
                return
            n += 1
        yield item
