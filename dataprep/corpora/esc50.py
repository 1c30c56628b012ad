"""ESC-50: environmental sound classification (Piczak 2015).

Source: https://github.com/karolpiczak/ESC-50 — 2,000 5-s clips, 50 classes, 5 folds.
License: CC BY-NC 3.0 (clips from freesound.org); override with ``options.license``.
Layout::

    <root>/meta/esc50.csv   filename,fold,target,category,esc10,src_file,take
    <root>/audio/<fold>-<src_file>-<take>-<target>.wav

The corpus has folds, not splits. ``options``: ``eval_folds`` (folds mapped to ``test``),
``val_folds`` (mapped to ``val``); when either is given, the other folds are ``train``,
otherwise ``split`` is None (decided later by hash). ``esc10_only`` keeps the ESC-10 subset.
Clips cut from the same freesound recording share ``src_file``; it is kept in ``extra`` as
``group`` so they are never each other's negatives nor split apart.
"""

from __future__ import annotations

from collections.abc import Iterator

from dataprep.core.config import CorpusConfig
from dataprep.core.sample import Reject, SampleRef
from dataprep.corpora import register
from dataprep.corpora._common import (
    CorpusRoot,
    ReaderOptions,
    parse_options,
    read_table,
    reader_reject,
    resolve_audio,
)


class Options(ReaderOptions):
    eval_folds: tuple[int, ...] = ()  # folds mapped to test
    val_folds: tuple[int, ...] = ()  # folds mapped to val
    esc10_only: bool = False
    license: str | None = "CC-BY-NC-3.0"
    check_exists: bool = True
    meta: str = "meta/esc50.csv"
    audio_dir: str = "audio"


@register("esc50", Options)
def read_esc50(cfg: CorpusConfig) -> Iterator[SampleRef | Reject]:
    opts = parse_options(cfg, Options)
    root = CorpusRoot(cfg.root)
    eval_folds = {int(f) for f in opts.eval_folds}
    val_folds = {int(f) for f in opts.val_folds}
    esc10_only = opts.esc10_only
    license_ = opts.license
    check_exists = opts.check_exists
    meta = opts.meta
    audio_dir = opts.audio_dir
    for line_no, row in enumerate(read_table(root.read_text(meta), ","), start=2):
        filename = row.get("filename", "").strip()
        category = row.get("category", "").strip()
        try:
            fold = int(row.get("fold", ""))
        except ValueError:
            fold = -1
        if not filename or not category or fold < 0:
            yield reader_reject(
                cfg,
                filename or f"{meta}:{line_no}",
                "invalid_metadata",
                f"{meta} line {line_no}: filename/fold/category missing or invalid",
            )
            continue
        esc10 = row.get("esc10", "").strip().lower() == "true"
        if esc10_only and not esc10:
            continue
        resolved = resolve_audio(cfg, root, f"{audio_dir}/{filename}", check_exists)
        if isinstance(resolved, Reject):
            yield resolved
            continue
        source_id, uri = resolved
        if fold in eval_folds:
            split: str | None = "test"
        elif fold in val_folds:
            split = "val"
        elif eval_folds or val_folds:
            split = "train"
        else:
            split = None
        src_file = row.get("src_file", "").strip()
        yield SampleRef(
            corpus=cfg.name,
            source_id=source_id,
            audio=uri,
            labels=(category,),
            license=license_,
            split=split,
            extra=tuple(
                (k, v)
                for k, v in sorted(
                    {
                        "task": "classification",
                        "fold": fold,
                        "target": row.get("target", "").strip(),
                        "esc10": esc10,
                        "group": f"{cfg.name}:{src_file}" if src_file else None,
                    }.items()
                )
                if v is not None
            ),
        )
