"""Data-quality report over a shard set: per-shard partial statistics (:mod:`.stats`, one Ray
task per shard in ``pipelines/quality_report.py``), their merge into the report JSON, and the
self-contained HTML page (:mod:`.render`)."""
