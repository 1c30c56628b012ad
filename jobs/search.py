"""Text->audio and audio->audio search over an embedding index (``pipelines/embed.py``).

    python jobs/search.py --index outputs/demo/index --text "a dog barks" [--text ...] --k 5
    python jobs/search.py --index outputs/demo/index --audio query.wav --k 5 [--out hits.jsonl]

Exact search: one matrix product of the (L2-normalized) index with the queries, then the top k
per query (``top_k``). Measured (``top_k``, float32, D=512, a batch of 10 queries, on the
project's shared 2-core machine at load average ~8): 0.24 s for 100k rows, 2.0 s for 1M rows,
memory-bound (the 1M x 512 matrix is 2 GB; the product took 1.6 s of it). That is fine for
batch use up to ~1M rows. ``--ann on`` (``auto``: from ``ANN_MIN_ROWS`` rows when usearch is
installed) searches an HNSW graph instead (``model/ann.py``: built once, saved beside the index
with a checked record; milliseconds per query, approximate; measured in bench/RESULTS.md).
The query model is
the one recorded in ``index.json`` (or ``--model``): a different model (weights or
preprocessing fingerprint) is refused, exit 2, since its vectors live in another space.
Output: one JSON line per hit (``query``, ``rank``, ``key``, ``score``, ``text``, ``source``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from dataprep.core import parquet

ANN_MIN_ROWS = 1_000_000  # --ann auto: below this an exact search is fast enough (docstring)


class SearchError(ValueError):
    """An index or query that cannot be used (one line, exit 2)."""


def load_index(index: Path) -> tuple[dict[str, Any], dict[str, list[Any]], np.ndarray]:
    """``(index.json, columns, embeddings [N, D] float32)``."""
    meta_f, emb_f = index / "index.json", index / "embeddings.parquet"
    if not (meta_f.is_file() and emb_f.is_file()):
        raise SearchError(f"{index}: not an embedding index (no index.json/embeddings.parquet)")
    info = json.loads(meta_f.read_text())
    table = parquet.read_table(emb_f)
    col = table.column("embedding").combine_chunks()
    emb = col.values.to_numpy(zero_copy_only=False).reshape(len(table), info["embed_dim"])
    cols = {c: table.column(c).to_pylist() for c in ("key", "text", "source")}
    return info, cols, np.ascontiguousarray(emb, dtype=np.float32)


def top_k(emb: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k: ``(indices [Q, k], scores [Q, k])``, best first."""
    scores = queries @ emb.T  # [Q, N]
    k = min(k, emb.shape[0])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    picked = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-picked, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(picked, order, axis=1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--index", required=True, help="directory written by pipelines/embed.py")
    p.add_argument("--text", action="append", default=[], help="a text query (repeatable)")
    p.add_argument("--audio", action="append", default=[], help="an audio query (repeatable)")
    p.add_argument("--model", default=None, help="query model (default: the index's model)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", default=None, help="write the hits here (JSON lines) too")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--ann", choices=("auto", "on", "off"), default="auto",
        help=f"approximate HNSW search (usearch); auto: from {ANN_MIN_ROWS:,} rows if installed",
    )  # fmt: skip
    return p.parse_args(argv)


def search(
    index: Path, emb: np.ndarray, queries: np.ndarray, k: int, ann: str
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of ``emb`` per query, exact or through the index's HNSW graph (``--ann``)."""
    from model import ann as ann_mod

    use = ann == "on" or (ann == "auto" and len(emb) >= ANN_MIN_ROWS and ann_mod.available())
    if not use:
        print(f"search: exact, {len(emb):,} rows", file=sys.stderr)
        return top_k(emb, queries, k)
    if not ann_mod.available():
        raise SearchError("--ann on needs usearch (pip install usearch; it is in constraints.txt)")
    print(f"search: approximate (HNSW), {len(emb):,} rows", file=sys.stderr)
    return ann_mod.ann_top_k(ann_mod.graph_for(index, emb), queries, k)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from model import CLAP
    from model.api import ModelDirError
    from model.hf_common import HFLoadError

    try:
        if not (args.text or args.audio):
            raise SearchError("give at least one --text or --audio query")
        if args.k < 1:
            raise SearchError(f"--k must be >= 1, got {args.k}")
        info, cols, emb = load_index(Path(args.index))
        m = CLAP.from_pretrained(args.model or info["model"], device=args.device, progress=False)
        fp = m.fingerprint()
        if fp != info["model_fingerprint"]:
            raise SearchError(
                f"{args.index} was embedded with {info['model']} (fingerprint "
                f"{info['model_fingerprint']}); this model has {fp}"
            )
        queries, names = [], []
        if args.text:
            queries.append(m.embed_text(args.text))
            names += [f"text:{t}" for t in args.text]
        if args.audio:
            a, errors = m.embed_audio(args.audio, return_errors=True)
            if errors:
                raise SearchError("; ".join(f"{e.name}: {e.reason}: {e.detail}" for e in errors))
            queries.append(a)
            names += [f"audio:{p}" for p in args.audio]
        idx, scores = search(Path(args.index), emb, np.concatenate(queries), args.k, args.ann)
    except (
        SearchError,
        ModelDirError,
        HFLoadError,
        FileNotFoundError,
        ValueError,
        OSError,
        KeyError,
    ) as err:
        print(
            "search: " + " | ".join(x.strip() for x in str(err).splitlines() if x.strip()),
            file=sys.stderr,
        )
        return 2
    hits = [
        {
            "query": q,
            "rank": r + 1,
            "key": cols["key"][i],
            "score": round(float(s), 6),
            "text": cols["text"][i],
            "source": cols["source"][i],
        }
        for q, row, srow in zip(names, idx, scores)
        for r, (i, s) in enumerate(zip(row, srow))
    ]
    lines = [json.dumps(h, ensure_ascii=False) for h in hits]
    print("\n".join(lines))
    if args.out:
        from dataprep.core.atomic import atomic_write_bytes

        atomic_write_bytes(Path(args.out), ("\n".join(lines) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
