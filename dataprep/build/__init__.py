"""The shard build: scan -> manifest -> plan -> execute (one task per shard) -> finalize.

* :mod:`.manifest` — SampleRef rows, the scan of one corpus, ``manifest.parquet`` I/O (pure).
* :mod:`.plan` — split assignment and byte-balanced shards as manifest row ranges (pure).
* :mod:`.shard` — the body of one shard task: process a row range, write tar + part (pure).
* :mod:`.finalize` — part records, resume checks, cross-shard dedup, per-split tables.
* :mod:`.progress` — the build's progress log lines (tqdm).
* :mod:`.executor` — the only module of ``dataprep`` that imports Ray; :func:`run_build`.

Nothing is imported here, so the pure modules load without Ray.
"""
