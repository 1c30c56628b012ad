"""Search over an embedding index: exact (``jobs/search.py``'s ``top_k``) vs the HNSW graph
(``model/ann.py``, ``--ann on``), same rows and queries, one run.

    python bench/search.py [--rows 50000] [--dim 512] [--queries 200] [--k 10]

The rows are unit vectors with the structure of real embeddings rather than uniform noise
(which no ANN index can beat): a ``--latent``-dimensional mixture of 500 clusters mapped
linearly to ``--dim``, plus small isotropic noise. Queries are rows perturbed by noise.
Printed: the graph's build time (once per index, saved beside it), the time per query of each
(exact as one batched matrix product, HNSW batched too), the speed-up, and recall@k of the
graph against the exact answer (target: >= 0.95 at a speed-up that makes it worth building).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from jobs.search import top_k
from model import ann


def embeddings(n: int, d: int, latent: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((500, latent)).astype(np.float32)
    z = centers[rng.integers(0, 500, n)] + 0.6 * rng.standard_normal((n, latent), np.float32)
    mix = rng.standard_normal((latent, d)).astype(np.float32) / np.sqrt(latent)
    x = z @ mix + 0.05 * rng.standard_normal((n, d), np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb = embeddings(args.rows, args.dim, args.latent)
    rng = np.random.default_rng(1)
    q = emb[rng.integers(0, len(emb), args.queries)]
    q = q + 0.02 * rng.standard_normal(q.shape).astype(np.float32)
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        col = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), args.dim)
        pq.write_table(pa.table({"embedding": col}), root / "embeddings.parquet")
        t0 = time.perf_counter()
        graph = ann.graph_for(root, emb)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ex_i, _ = top_k(emb, q, args.k)
        exact_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        got_i, _ = ann.ann_top_k(graph, q, args.k)
        ann_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ann.graph_for(root, emb)  # the saved graph: checked and loaded, not rebuilt
        load_s = time.perf_counter() - t0
    recall = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(got_i, ex_i)]))
    per_q = 1e3 / args.queries
    pays = build_s / max(exact_s - ann_s, 1e-9) * args.queries
    print(f"rows {args.rows:,} x {args.dim} (latent {args.latent}), {args.queries} queries")
    print(f"HNSW build {build_s:.1f} s ({args.rows / build_s:,.0f} rows/s, once); "
          f"reload {load_s:.2f} s")  # fmt: skip
    print(f"exact {exact_s * per_q:.3f} ms/query, HNSW {ann_s * per_q:.3f} ms/query: "
          f"{exact_s / ann_s:.1f}x; recall@{args.k} {recall:.3f} (target >= 0.95)")  # fmt: skip
    print(f"break-even: the build pays after ~{pays:,.0f} queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
