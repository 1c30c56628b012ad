"""Text, caption and audio augmentation for the shard builder.

The builder (``dataprep/process.py``) sets these up once per Ray task::

    text_aug = TextAugmenter(cfg.build.augment)
    meta["texts"] += text_aug(meta)          # additional TextEntry dicts
    rejects += text_aug.drain_rejects()       # generated texts that failed validation
    text_aug.close()                          # stops an embedded LLM server, flushes state

    audio_aug = AudioAugmenter(cfg.build.augment, sample_rate_hz, noise_pool=None)
    for wave, chain in audio_aug.views(wave, key): ...   # extra samples, same group

``TextAugmenter(meta)`` returns only new entries, each ``{text, lang, kind, provenance}`` with
``kind`` = ``template`` | ``nlpaug:<name>`` | ``llm:<model>``; the same (``cfg.seed``,
``meta["id"]``) and inputs always give the same list. Order: templates (one per language in
``template_langs``, :mod:`.templates`), then LLM texts (:mod:`.llm`, when ``cfg.llm.server`` is
not ``none``), then nlpaug variants (:mod:`.text`) of the original and template texts.

Rejects: a generated text that fails validation (wrong language, refusal, copy, drift...) or an
augmenter that raises is not an error of the sample: it becomes a
:class:`dataprep.core.sample.Reject` with ``stage="augment"`` and a machine-readable ``reason``
(e.g. ``llm_wrong_language``), appended to ``TextAugmenter.rejects``. The builder drains that
list after each sample (``drain_rejects()``) into ``rejects.parquet``; the sample itself is kept.
"""

from __future__ import annotations

import logging
from typing import Any

from dataprep.augment.audio import AudioAugmenter
from dataprep.core.sample import TEXT_REJECT_STAGE, Reject, TextEntry

log = logging.getLogger(__name__)

__all__ = ["AudioAugmenter", "TextAugmenter"]


class TextAugmenter:
    """Templates + LLM + nlpaug for one sample's ``json``; see the module docstring."""

    def __init__(self, cfg: Any) -> None:
        from dataprep.augment.templates import TemplateCaptioner
        from dataprep.augment.text import NlpaugAugmenter

        self.cfg = cfg
        self.rejects: list[Reject] = []
        self.templates = None
        if cfg.templates:
            self.templates = TemplateCaptioner(tuple(cfg.template_langs), cfg.seed)
        self.nlpaug = None
        if cfg.nlpaug:
            self.nlpaug = NlpaugAugmenter(tuple(cfg.nlpaug), cfg.nlpaug_p, cfg.seed)
        self.llm = None
        if cfg.llm:
            from dataprep.augment.llm import LLMAugmenter, llm_available

            ok, why = llm_available(cfg.llm)
            if ok:
                self.llm = LLMAugmenter(cfg.llm, seed=cfg.seed)
            else:
                log.warning("LLM caption augmentation skipped: %s", why)

    def __call__(self, meta: dict[str, Any]) -> list[TextEntry]:
        key = str(meta.get("id", ""))
        existing: list[dict[str, Any]] = list(meta.get("texts") or [])
        seen = {t["text"] for t in existing}
        new: list[dict[str, Any]] = []

        def add(entries: list[dict[str, Any]]) -> None:
            for e in entries:
                if e["text"] and e["text"] not in seen:
                    seen.add(e["text"])
                    new.append(e)

        if self.templates is not None:
            add(self._guard("templates", meta, lambda: self.templates(meta)))
        if self.llm is not None:
            sources = existing + new
            got = self._guard("llm", meta, lambda: self.llm.augment(meta, sources))
            if isinstance(got, tuple):
                entries, rejects = got
                add(entries)
                self.rejects.extend(_as_reject(meta, r) for r in rejects)
        if self.nlpaug is not None:
            src = [t for t in existing + new if not str(t.get("kind", "")).startswith("nlpaug:")]
            n = self.cfg.nlpaug_per_sample
            add(self._guard("nlpaug", meta, lambda: self.nlpaug.variants(src, key, n)))
        return new  # type: ignore[return-value]

    def _guard(self, stage: str, meta: dict[str, Any], fn: Any) -> Any:
        # One policy at the boundary: an augmenter bug costs the augmented texts, not the sample.
        try:
            return fn()
        except Exception as e:
            log.exception("%s augmentation failed for %s", stage, meta.get("id"))
            self.rejects.append(_as_reject(meta, (f"{stage}_error", f"{type(e).__name__}: {e}")))
            return []

    def drain_rejects(self) -> list[Reject]:
        out, self.rejects = self.rejects, []
        return out

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None


def _as_reject(meta: dict[str, Any], r: Any) -> Reject:
    if isinstance(r, Reject):
        return r
    reason, detail = r
    corpus = str(meta.get("corpus", ""))
    return Reject(
        source=f"{corpus}:{meta.get('source_id', meta.get('id', ''))}",
        stage=TEXT_REJECT_STAGE,
        reason=reason,
        detail=detail,
        corpus=corpus,
    )
