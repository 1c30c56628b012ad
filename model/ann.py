"""Approximate nearest-neighbour search over an embedding index (``jobs/search.py --ann``).

Exact search (``jobs/search.py``'s ``top_k``: one matrix product) is right for batch use up to
about a million rows: 2.0 s per query batch at 1M x 512 here, and nothing to build. Past that,
or for a long-lived service answering one query at a time, an HNSW graph (``usearch``, cosine)
answers in milliseconds, at the price of building it once: measured here at ~1,000 vectors/s
on 2 busy cores for D=512 (bench/RESULTS.md), so the graph is saved beside the index and reused.

The saved graph is trusted only as far as its record says: ``ann.json`` (written last) names
the sha256 of the ``embeddings.parquet`` it was built from and of the graph file itself, both
checked before use; a graph of other embeddings, a damaged file or another usearch version is
rebuilt. usearch's file format is a plain binary layout, no pickle.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from dataprep.core.atomic import atomic_write_json, sha256_file

log = logging.getLogger(__name__)

GRAPH, RECORD = "ann.usearch", "ann.json"
CONNECTIVITY, EXPANSION_ADD = 16, 128  # usearch's HNSW M and ef_construction


def available() -> bool:
    try:
        import usearch.index  # noqa: F401
    except ImportError:
        return False
    return True


def _version() -> str:
    import usearch

    return str(getattr(usearch, "__version__", "unknown"))


def _new(ndim: int) -> Any:
    from usearch.index import Index

    return Index(
        ndim=ndim, metric="cos", dtype="f32", connectivity=CONNECTIVITY,
        expansion_add=EXPANSION_ADD,
    )  # fmt: skip


def _record(emb: np.ndarray, emb_digest: str) -> dict[str, Any]:
    return {
        "rows": int(emb.shape[0]), "ndim": int(emb.shape[1]), "embeddings_sha256": emb_digest,
        "usearch": _version(), "connectivity": CONNECTIVITY, "expansion_add": EXPANSION_ADD,
    }  # fmt: skip


def _load(index_dir: Path, want: dict[str, Any]) -> Any | None:
    import json

    try:
        rec = json.loads((index_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or {k: rec.get(k) for k in want} != want:
        log.info(
            "ANN graph in %s was built for other embeddings or settings: rebuilding", index_dir
        )
        return None
    graph = index_dir / GRAPH
    if not graph.is_file() or sha256_file(graph) != rec.get("graph_sha256"):
        log.warning("ANN graph %s fails its sha256: rebuilding it", graph)
        return None
    index = _new(want["ndim"])
    index.load(str(graph))
    if len(index) != want["rows"]:
        log.warning(
            "ANN graph %s holds %d rows, not %d: rebuilding", graph, len(index), want["rows"]
        )
        return None
    return index


def graph_for(index_dir: Path, emb: np.ndarray) -> Any:
    """The HNSW graph of ``emb`` (the rows of ``index_dir/embeddings.parquet``): the saved one
    when its record matches, else built now and saved (then its record)."""
    want = _record(emb, sha256_file(index_dir / "embeddings.parquet"))
    index = _load(index_dir, want)
    if index is not None:
        log.info("ANN: loaded the HNSW graph of %d rows from %s", len(index), index_dir / GRAPH)
        return index
    log.info("ANN: building an HNSW graph of %d rows (once; saved beside the index)", len(emb))
    index = _new(emb.shape[1])
    index.add(np.arange(len(emb), dtype=np.uint64), emb, threads=0, log=False)
    tmp = index_dir / f".{GRAPH}.tmp-{os.getpid()}"
    try:
        index.save(str(tmp))
        digest = sha256_file(tmp)
        os.replace(tmp, index_dir / GRAPH)
    except OSError as e:  # a read-only index: search goes on, the next run builds again
        log.warning("ANN: could not save the graph in %s (%s)", index_dir, e)
        tmp.unlink(missing_ok=True)
        return index
    atomic_write_json(index_dir / RECORD, {**want, "graph_sha256": digest})
    return index


def ann_top_k(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Approximate cosine top-k: ``(indices [Q, k], scores [Q, k])``, best first, as
    ``top_k`` returns them (k capped at the number of rows)."""
    k = min(k, len(index))
    matches = index.search(np.ascontiguousarray(queries, dtype=np.float32), k, threads=0)
    keys = np.asarray(matches.keys, dtype=np.int64).reshape(len(queries), -1)[:, :k]
    scores = 1.0 - np.asarray(matches.distances, dtype=np.float32).reshape(len(queries), -1)[:, :k]
    return keys, scores
