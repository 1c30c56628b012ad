"""model/ann.py: the HNSW graph behind ``jobs/search.py --ann`` (real usearch).

Synthetic clustered unit vectors stand in for an embedding index (the CLI test over a real
index is tests/pipelines/test_embed.py); recall is measured against the exact ``top_k``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.search import top_k
from model import ann


def _index(root: Path, n: int = 3000, d: int = 32, seed: int = 0) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((60, d)).astype(np.float32)
    emb = centers[rng.integers(0, 60, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    root.mkdir(parents=True, exist_ok=True)
    table = pa.table({"embedding": pa.array(list(emb), type=pa.list_(pa.float32()))})
    pq.write_table(table, root / "embeddings.parquet")
    return root, emb


def test_hnsw_matches_exact_search_and_is_reused(tmp_path: Path, caplog) -> None:
    root, emb = _index(tmp_path / "idx")
    rng = np.random.default_rng(1)
    q = emb[rng.integers(0, len(emb), 50)] + 0.05 * rng.standard_normal((50, 32))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    caplog.set_level(logging.INFO, logger="model.ann")
    graph = ann.graph_for(root, emb)
    assert "building an HNSW graph of 3000 rows" in caplog.text
    assert (root / ann.GRAPH).is_file() and (root / ann.RECORD).is_file()
    got_i, got_s = ann.ann_top_k(graph, q, 10)
    ex_i, ex_s = top_k(emb, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got_i, ex_i)])
    assert recall >= 0.95, recall
    # the scores are cosine similarities, best first, equal to the exact ones where ids agree
    assert np.all(np.diff(got_s, axis=1) <= 1e-6)
    assert np.allclose(got_s[:, 0], ex_s[:, 0], atol=1e-4)
    caplog.clear()
    again = ann.graph_for(root, emb)  # reused, not rebuilt
    assert "loaded the HNSW graph of 3000 rows" in caplog.text and "building" not in caplog.text
    assert np.array_equal(ann.ann_top_k(again, q, 10)[0], got_i)


def test_a_damaged_or_stale_graph_is_rebuilt(tmp_path: Path, caplog) -> None:
    root, emb = _index(tmp_path / "idx", n=500)
    ann.graph_for(root, emb)
    data = bytearray((root / ann.GRAPH).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / ann.GRAPH).write_bytes(bytes(data))
    caplog.set_level(logging.INFO, logger="model.ann")
    ann.graph_for(root, emb)
    assert "fails its sha256: rebuilding it" in caplog.text and "building an HNSW" in caplog.text
    caplog.clear()
    _, other = _index(root, n=500, seed=7)  # the index's embeddings replaced
    graph = ann.graph_for(root, other)
    assert "built for other embeddings" in caplog.text
    assert ann.ann_top_k(graph, other[:3], 1)[0][:, 0].tolist() == [0, 1, 2]


def test_k_beyond_the_rows_is_capped(tmp_path: Path) -> None:
    root, emb = _index(tmp_path / "idx", n=5)
    idx, scores = ann.ann_top_k(ann.graph_for(root, emb), emb[:2], 10)
    assert idx.shape == scores.shape == (2, 5) and idx[:, 0].tolist() == [0, 1]
