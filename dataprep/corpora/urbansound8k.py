"""UrbanSound8K (Salamon et al., ACM MM 2014).

Source: https://urbansounddataset.weebly.com/urbansound8k.html — 8,732 urban sound slices
(<= 4 s) in 10 classes, 10 folds. License: CC BY-NC 3.0 (freesound clips).
Layout::

    metadata/UrbanSound8K.csv   slice_file_name,fsID,start,end,salience,fold,classID,class
    audio/fold<k>/<fsID>-<classID>-<occurrence>-<slice>.wav

Slices are already cut (``start``/``end`` are positions in the freesound recording, kept in
``extra``). As with ESC-50, ``eval_folds``/``val_folds`` map folds to splits; slices of the
same freesound recording (``fsID``) share ``extra.group``.
"""

from __future__ import annotations

from collections.abc import Iterator

from dataprep.core.config import CorpusConfig
from dataprep.core.sample import Reject, SampleRef
from dataprep.corpora import register
from dataprep.corpora._common import (
    CorpusRoot,
    ReaderOptions,
    parse_float,
    parse_options,
    read_table,
    reader_reject,
    resolve_audio,
)


class Options(ReaderOptions):
    eval_folds: tuple[int, ...] = ()
    val_folds: tuple[int, ...] = ()
    license: str | None = "CC-BY-NC-3.0"
    check_exists: bool = True


SALIENCE = {"1": "foreground", "2": "background"}


def fold_split(fold: int, eval_folds: set[int], val_folds: set[int]) -> str | None:
    if fold in eval_folds:
        return "test"
    if fold in val_folds:
        return "val"
    return "train" if (eval_folds or val_folds) else None


@register("urbansound8k", Options)
def read_urbansound8k(cfg: CorpusConfig) -> Iterator[SampleRef | Reject]:
    opts = parse_options(cfg, Options)
    root = CorpusRoot(cfg.root)
    eval_folds = {int(f) for f in opts.eval_folds}
    val_folds = {int(f) for f in opts.val_folds}
    license_ = opts.license
    check_exists = opts.check_exists
    meta = "metadata/UrbanSound8K.csv"
    for line_no, row in enumerate(read_table(root.read_text(meta), ","), start=2):
        fname = row.get("slice_file_name", "").strip()
        label = row.get("class", "").strip()
        try:
            fold = int(row.get("fold", ""))
        except ValueError:
            fold = -1
        if not fname or not label or fold < 0:
            yield reader_reject(
                cfg,
                fname or f"{meta}:{line_no}",
                "invalid_metadata",
                f"{meta} line {line_no}: slice_file_name/fold/class missing or invalid",
            )
            continue
        resolved = resolve_audio(cfg, root, f"audio/fold{fold}/{fname}", check_exists)
        if isinstance(resolved, Reject):
            yield resolved
            continue
        source_id, uri = resolved
        fs_id = row.get("fsID", "").strip()
        extra = {
            "task": "classification",
            "fold": fold,
            "class_id": row.get("classID", "").strip(),
            "salience": SALIENCE.get(row.get("salience", "").strip(), "unknown"),
            "source_start_s": parse_float(row.get("start")),
            "source_end_s": parse_float(row.get("end")),
            "group": f"{cfg.name}:{fs_id}" if fs_id else None,
        }
        yield SampleRef(
            corpus=cfg.name,
            source_id=source_id,
            audio=uri,
            labels=(label,),
            license=license_,
            split=fold_split(fold, eval_folds, val_folds),
            extra=tuple(sorted((k, v) for k, v in extra.items() if v is not None)),
        )
