"""Evaluation harness library behind ``jobs/evaluate.py``.

- :mod:`.tasks`   — the task YAML schema (typed, unknown keys are errors)
- :mod:`.data`    — evaluation items read with the corpus readers and featurized by the same
  :class:`dataprep.process.SampleProcessor` as training, cached per feature fingerprint
- :mod:`.embed`   — frozen-model embeddings (windowed audio, batched text)
- :mod:`.metrics` — accuracy, retrieval R@k / mAP@10, bootstrap confidence intervals
- :mod:`.runner`  — one function per task type, the result JSON and the Markdown table
- :mod:`.sed`     — zero-shot sound-event detection: frame scores -> events -> PSDS (psds_eval)
"""
