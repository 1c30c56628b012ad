"""Zero-shot classify unlabelled audio against free-text labels; one output row per file.

    python jobs/predict.py --model outputs/demo/run/final --labels "dog barking,rain,siren" \\
        [--templates "the sound of {}|{}"] [--top-k 3] --out preds.csv PATH...

PATH: audio files (local or ``s3://``/``gs://``/``http(s)://``), folders (searched recursively
for audio files) or manifests, local or remote (``.jsonl``: one object per line with
``audio_filepath``/``audio``/``path``; ``.csv``/``.tsv`` with such a column; ``.txt``/``.lst``:
one path per line; relative paths are relative to the manifest).
``--out`` ending in ``.jsonl`` writes JSON lines, anything else CSV. Columns: ``file``, then
``label_i``/``score_i`` for the top-k classes (``score`` = zero-shot probability), ``error``.
A file that cannot be read or is empty is a row with its ``error`` (``reason: detail``) and no
labels; the others complete. Exit 2 with one line on stderr for duplicate or empty labels, a
directory that is not a polyclap export or a ClapModel, or features that do not fit the tower.
``--templates`` and ``--lang``: prompt templates (``|``-separated, each with one ``{}``), for
one language (``--lang de``); several ``--templates``/``--lang`` pairs are ensembled.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

AUDIO_EXTS = {
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".m4a",
    ".aac",
    ".webm",
    ".aif",
    ".aiff",
    ".au",
    ".caf",
    ".wv",
    ".mka",
}
MANIFEST_EXTS = {".jsonl", ".json", ".csv", ".tsv", ".txt", ".lst"}
PATH_KEYS = ("audio_filepath", "audio", "path", "file", "filename")


class InputError(ValueError):
    """An argument or input listing that cannot be used (one line, exit 2)."""


def _manifest_paths(manifest: str) -> Iterator[str]:
    from dataprep.core import storage  # a manifest may be local or in a bucket / on a server

    base, suffix = storage.parent(manifest), Path(manifest).suffix
    text = storage.read_bytes(manifest).decode("utf-8")
    if suffix in (".jsonl", ".json"):
        rows = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    elif suffix in (".csv", ".tsv"):
        rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
    else:
        rows = [{"path": ln.strip()} for ln in text.splitlines() if ln.strip()]
    for i, row in enumerate(rows, 1):
        key = next((k for k in PATH_KEYS if isinstance(row, dict) and row.get(k)), None)
        if key is None:
            raise InputError(f"{manifest}:{i}: no audio path column (one of {PATH_KEYS})")
        p = str(row[key])
        yield p if Path(p).is_absolute() or "://" in p else str(storage.join(base, p))


def list_inputs(paths: list[str]) -> list[str]:
    """Files as given (even unreadable ones: they become error rows; ``s3://``, ``gs://``,
    ``http(s)://`` ones are streamed), folders expanded to their audio files (sorted),
    manifests (local or remote) expanded to the paths they list."""
    out: list[str] = []
    for raw in paths:
        p = Path(raw)
        if "://" not in raw and p.is_dir():
            out.extend(
                str(f)
                for f in sorted(p.rglob("*"))
                if f.is_file() and f.suffix.lower() in AUDIO_EXTS
            )
        elif p.suffix.lower() in MANIFEST_EXTS and ("://" in raw or p.is_file()):
            out.extend(_manifest_paths(raw))
        else:
            out.append(raw)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="polyclap export (final/) or ClapModel dir")
    p.add_argument("--labels", required=True, help="comma-separated class labels (free text)")
    p.add_argument(
        "--templates",
        action="append",
        default=None,
        help="'|'-separated prompt templates with one {} (repeatable, one per --lang)",
    )
    p.add_argument("--lang", action="append", default=None, help="language of each --templates")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--out", required=True, help="preds.csv or preds.jsonl")
    p.add_argument("--batch-files", type=int, default=32, help="files embedded per step")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("paths", nargs="+", help="audio files, folders or manifests")
    return p.parse_args(argv)


def _templates(args: argparse.Namespace) -> dict[str, list[str]] | None:
    if not args.templates:
        if args.lang:
            raise InputError("--lang names the language of a --templates; give both")
        return None
    langs = args.lang or ["en"] * len(args.templates)
    if len(langs) != len(args.templates):
        raise InputError(f"{len(args.templates)} --templates but {len(langs)} --lang")
    out: dict[str, list[str]] = {}
    for lang, t in zip(langs, args.templates):
        out.setdefault(lang, []).extend(x.strip() for x in t.split("|") if x.strip())
    return out


def _rows(
    m: Any, files: list[str], classes: Any, labels: list[str], k: int, batch: int
) -> Iterator[dict[str, Any]]:
    from tqdm.auto import tqdm

    for b in tqdm(
        range(0, len(files), batch), desc="predict", unit="batch", disable=len(files) <= batch
    ):
        chunk = files[b : b + batch]
        emb, errors = m.embed_audio(chunk, return_errors=True)
        probs = m.probabilities(emb, classes)
        failed = {e.index: f"{e.reason}: {e.detail}" for e in errors}
        for i, f in enumerate(chunk):
            if i in failed:
                yield {"file": f, "top": [], "error": failed[i]}
                continue
            order = probs[i].argsort()[::-1][:k]
            yield {
                "file": f,
                "top": [(labels[j], float(probs[i, j])) for j in order],
                "error": None,
            }


def write(rows: Iterator[dict], out: Path, k: int) -> int:
    from dataprep.core.atomic import atomic_write_bytes

    n, lines = 0, []
    if out.suffix == ".jsonl":
        for r in rows:
            lines.append(
                json.dumps(
                    {
                        "file": r["file"],
                        "error": r["error"],
                        "top": [{"label": lab, "score": round(s, 6)} for lab, s in r["top"]],
                    },
                    ensure_ascii=False,
                )
            )
            n += 1
        atomic_write_bytes(out, ("\n".join(lines) + "\n").encode())
        return n
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        ["file", *[f"{c}_{i}" for i in range(1, k + 1) for c in ("label", "score")], "error"]
    )
    for r in rows:
        cells = [x for lab, s in r["top"] for x in (lab, f"{s:.6f}")]
        w.writerow([r["file"], *cells, *[""] * (2 * k - len(cells)), r["error"] or ""])
        n += 1
    atomic_write_bytes(out, buf.getvalue().encode())
    return n


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from model import CLAP
    from model.inference import USER_ERRORS, one_line
    from model.prompts import check_labels

    try:
        labels = check_labels(args.labels.split(","))
        if args.top_k < 1:
            raise InputError(f"--top-k must be >= 1, got {args.top_k}")
        templates = _templates(args)
        files = list_inputs(args.paths)
        if not files:
            raise InputError(f"no audio files in {args.paths}")
        m = CLAP.from_pretrained(args.model, device=args.device)
        classes = m.class_embeddings(labels, templates)
    except USER_ERRORS as err:  # InputError, ModelDirError, HFLoadError, ...: one line
        print(f"predict: {one_line(err)}", file=sys.stderr)
        return 2
    k = min(args.top_k, len(labels))
    out = Path(args.out)
    n = write(_rows(m, files, classes, labels, k, args.batch_files), out, k)
    print(f"predict: {n} rows -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
