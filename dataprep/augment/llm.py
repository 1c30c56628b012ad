"""LLM caption augmentation through any OpenAI-compatible ``/v1/chat/completions`` server.

Tasks (``LLMConfig.tasks``): ``paraphrase`` an English caption (a corpus caption or the English
template caption), ``caption`` a clip from its facts (labels, emotion, gender, transcript), and
``translate`` the caption into ``target_langs``. Prompts are data
(``templates/llm_prompts.yaml``); replies are requested with
``response_format={"type": "json_object"}`` (llama.cpp's server and vLLM both honour it).

- **Client** (:class:`~dataprep.augment.llm_client.ChatClient`): httpx + tenacity. Each job
  (one request, e.g. one paraphrase) has one budget of ``max_retries + 1`` attempts for every
  failure (HTTP 5xx/429, timeouts, dropped connections, garbage replies, a reply that is not
  the JSON caption asked for, which is retried with the next seed); a translation's
  back-translation is a second job. Requests of one sample run concurrently, at most
  ``concurrency`` in flight. Every job ends as an accepted text or a reject with its reason.
- **Cache** (:class:`~dataprep.augment.llm_client.DiskCache`): one JSON file per request under
  ``cache_dir``, keyed by sha256(model, prompt id, params, input), written atomically. The raw
  reply is cached, so a rerun sends no request and gives identical texts, and a change of
  validation settings does not cost a regeneration. Provenance records the generation time
  from the cache entry. Failed requests are not cached: a rerun asks again.
- **Validation**: :mod:`dataprep.augment.validate` (JSON, length, refusal, copy of any of the
  sample's texts up to case and punctuation, language, numbers/counts, meaning). Meaning is
  checked with English tools (MiniLM, WordNet); a translation is translated back to English
  and compared with its source; any other output that is not English cannot be checked and is
  rejected as ``llm_unverifiable_language``. A failure becomes ``(reason, detail)`` in the
  rejects the :class:`~dataprep.augment.TextAugmenter` reports (stage ``augment``: a rejected
  generated text, counted apart from rejected inputs); the sample keeps its other texts
  (fallback: templates and originals).
- **Server**: ``server: external`` talks to ``base_url`` (e.g. vLLM on the GPU nodes, see
  ``infra/``); ``server: inprocess``: :mod:`dataprep.augment.llm_local` (the packaged SmolLM2
  through transformers in the worker process, no server; the demo's); ``server: embedded``:
  :mod:`dataprep.augment.llm_server` (llama.cpp on 127.0.0.1, one server per node shared by
  its shard tasks through leases; :meth:`LLMAugmenter.close` gives up this task's lease, the
  server's supervisor ends it when no task on the node holds one).

Production (vLLM on the cluster's GPU nodes, started there with e.g.
``vllm serve Qwen/Qwen2.5-7B-Instruct --port 8000 --api-key $VLLM_API_KEY``)::

    build:
      augment:
        llm:
          server: external
          base_url: http://<vllm-host>:8000      # "/v1" is added when missing
          model: Qwen/Qwen2.5-7B-Instruct         # sent in requests, kept in provenance
          api_key_env: VLLM_API_KEY               # the variable's name, never the key
          concurrency: 32                         # per builder task; vLLM batches them
          tasks: [paraphrase, caption, translate]
          target_langs: [de, fr, es, zh, hi, ar, sw]
          cache_dir: s3-mounted-or-shared/llm_cache

Local (CPU, this repository's tests): ``llm: {server: embedded}`` after
``pip install '.[llm]'``. Rejects are reported per sample (see :mod:`dataprep.augment`) and
counted in the log line :meth:`LLMAugmenter.close` writes.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from dataprep.augment import validate as val
from dataprep.augment.llm_client import BadReply, ChatClient, DiskCache, LLMError
from dataprep.augment.llm_local import LocalChat
from dataprep.augment.llm_server import EmbeddedServer, default_gguf, llm_available
from dataprep.augment.templates import facts_of, load_templates
from dataprep.core.hashing import stable_seed
from dataprep.core.lang import base_lang

__all__ = ["ChatClient", "DiskCache", "EmbeddedServer", "LLMAugmenter", "LLMError", "llm_available"]

log = logging.getLogger(__name__)

PROMPTS_FILE = Path(__file__).resolve().parent / "templates" / "llm_prompts.yaml"
PROMPT_IDS = {"paraphrase": "paraphrase_v2", "caption": "caption_v3", "translate": "translate_v2"}
# The reply's shape as a JSON schema. llama.cpp's server (embedded) turns it into a grammar, so a
# small model can only answer {"caption": "..."}: with the bare json_object mode SmolLM2-135M
# invented keys ({"title": ..., "description": {...}}) and 5 of 13 demo requests were retries.
# An external server gets the portable {"type": "json_object"} (vLLM, OpenAI).
CAPTION_SCHEMA = {
    "type": "object",
    "properties": {"caption": {"type": "string"}},
    "required": ["caption"],
}


# -- the augmenter -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    task: str
    target_lang: str
    text: str  # source caption ("" for the caption task)
    facts: str  # facts line for the caption task
    copies: tuple[str, ...] = ()  # the sample's texts: an output equal to one is a copy


class LLMAugmenter:
    """Builds requests from a sample, runs them (cache first), validates, returns texts."""

    def __init__(self, cfg: Any, seed: int = 0, base_url: str | None = None) -> None:
        self.cfg = cfg
        self.seed = seed
        self.prompts = yaml.safe_load(PROMPTS_FILE.read_text(encoding="utf-8"))
        self.server: EmbeddedServer | None = None
        self.client: ChatClient | LocalChat
        if cfg.server == "inprocess" and base_url is None:
            path = cfg.model_path or default_gguf()
            self.client = LocalChat(cfg, str(path), pinned=cfg.model_path is None)
        else:
            if base_url is None:
                if cfg.server == "embedded":
                    self.server = EmbeddedServer(cfg)
                    base_url = self.server.base_url
                else:
                    base_url = cfg.base_url
            api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
            self.client = ChatClient(
                base_url, cfg.timeout_s, cfg.max_retries, cfg.backoff_s, api_key, cfg.concurrency
            )
        self.cache = DiskCache(cfg.cache_dir)
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, cfg.concurrency), thread_name_prefix="llm"
        )
        self.en = load_templates("en")
        self.accepted = 0
        self.rejected: dict[str, int] = {}

    # -- requests ---------------------------------------------------------------------------
    def jobs(self, meta: dict[str, Any], texts: list[dict[str, Any]]) -> list[Job]:
        src = _english_caption(meta, texts)
        # Every text the sample already has (transcripts included: a caption of speech that
        # repeats the words spoken is a copy of the transcript, not a caption).
        copies = tuple(dict.fromkeys(str(t["text"]) for t in texts if t.get("text")))
        out: list[Job] = []
        for task in self.cfg.tasks:
            if task == "paraphrase" and src:
                out.append(Job("paraphrase", "en", src, "", copies))
            elif task == "caption":
                facts = _facts_line(meta, self.en)
                if facts:
                    out.append(Job("caption", "en", "", facts, copies))
            elif task == "translate" and src:
                out.extend(
                    Job("translate", lang, src, "", copies)
                    for lang in self.cfg.target_langs
                    if lang != "en"
                )
        return out

    def _messages(self, job: Job) -> tuple[str, list[dict[str, str]], str]:
        """``(prompt id, chat messages, the prompt's own text)``: the worked examples are chat
        turns (a user request, the assistant's JSON reply) before the real request, which a
        135M model follows far better than an example inside the instruction; the prompt text
        (instruction and examples, without the source) is what an echo is checked against."""
        pid = PROMPT_IDS[job.task]
        p = self.prompts[pid]
        language = self.en.languages.get(job.target_lang, job.target_lang)
        fields = {"text": job.text, "language": language, "facts": job.facts}
        messages = [{"role": "system", "content": p["system"]}]
        own = [p["system"]]
        for ex in p.get("examples") or ():
            ask = p["user"].format(**{**fields, **ex["input"]})
            reply = json.dumps({"caption": ex["caption"]}, ensure_ascii=False)
            messages += [{"role": "user", "content": ask}, {"role": "assistant", "content": reply}]
            own += [ask, reply]
        messages.append({"role": "user", "content": p["user"].format(**fields)})
        return pid, messages, " ".join(own)

    def _ask(self, job: Job) -> tuple[dict[str, Any], str | None, val.Verdict]:
        """One job through cache or server, validated; :class:`LLMError` when the server fails.

        All attempts of the job share the client's one retry budget; a reply that is not the
        JSON asked for moves to the next seed (a new cache key), a transport failure does not.
        """
        pid, messages, own_text = self._messages(job)
        base_params = {"temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}
        inp = {"messages": messages}
        source = job.text or job.facts

        def attempt(n_bad: int) -> tuple[dict[str, Any], str | None, val.Verdict]:
            req_seed = _seed(self.seed, pid, json.dumps(messages, ensure_ascii=False), n_bad)
            params = {**base_params, "seed": req_seed}
            key = DiskCache.key(self.cfg.model, pid, params, inp)
            entry = self.cache.get(key)
            if entry is None:
                body = {
                    "model": self.cfg.model,
                    "messages": messages,
                    "response_format": (
                        {"type": "json_object", "schema": CAPTION_SCHEMA}
                        if self.cfg.server == "embedded"
                        else {"type": "json_object"}
                    ),
                    **params,
                }
                entry = {
                    "content": self.client.post(body),
                    "model": self.cfg.model,
                    "prompt": pid,
                    "params": params,
                    "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
                self.cache.put(key, entry)
            caption, verdict = val.validate(
                entry["content"], source, job.target_lang, self.cfg, job.task,
                own_text, copies=job.copies,
            )  # fmt: skip
            if verdict.reason == "llm_malformed_json":
                raise BadReply((entry, caption, verdict))
            return entry, caption, verdict

        return self.client.run(attempt)

    def _run(self, job: Job) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
        where = f"{job.task}->{job.target_lang}"
        try:
            entry, caption, verdict = self._ask(job)
            if verdict.ok and job.task == "translate" and self.cfg.back_translate:
                verdict = self._back_translate(job, caption or "", verdict)
        except LLMError as e:
            return None, (e.reason, f"{where}: {e.detail}")
        if not verdict.ok:
            return None, (verdict.reason, f"{where}: {verdict.detail}")
        return {
            "text": caption,
            "lang": job.target_lang,
            "kind": f"llm:{self.cfg.model}",
            "provenance": {
                "model": entry["model"],
                "template": entry["prompt"],
                "params": entry["params"],
                "time": entry["time"],
                "task": job.task,
                "source": job.text or job.facts,
                "checks": verdict.checks,
            },
        }, None

    def _back_translate(self, job: Job, caption: str, verdict: val.Verdict) -> val.Verdict:
        """Translate the translation back to English and compare it with the source caption.

        MiniLM is English-only, so a German text cannot be compared with its English source
        directly; its translation back can. Fluent nonsense in the right language passes every
        other check (LID says "German" with 0.99), this one it does not.
        """
        _, back, bv = self._ask(Job("translate", "en", caption, ""))
        checks = dict(verdict.checks, back_translation=back)
        if not bv.ok or not back:
            return val.Verdict(
                False,
                "llm_translation_unverified",
                f"back-translation failed: {bv.reason} {bv.detail}",
                checks,
            )
        sim = val.embedder().similarity(job.text, back)
        checks["back_similarity"] = round(sim, 4)
        if sim < self.cfg.min_similarity:
            return val.Verdict(
                False,
                "llm_translation_drift",
                f"back-translation {back!r}: similarity {sim:.3f}",
                checks,
            )
        return val.Verdict(True, checks=checks)

    def augment(
        self, meta: dict[str, Any], texts: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """``(accepted entries, [(reason, detail), ...])`` for one sample, in request order."""
        jobs = self.jobs(meta, texts)
        results = list(self.pool.map(self._run, jobs))
        accepted: list[dict[str, Any]] = []
        rejects: list[tuple[str, str]] = []
        for i, (entry, rej) in enumerate(results):
            twin = entry is not None and next(
                (a for a in accepted if val.same_text(a["text"], entry["text"])), None
            )
            if twin:  # two tasks' replies agree (caption "a dog barks" = paraphrase): keep one
                task = entry["provenance"]["task"]  # type: ignore[index]
                rej = ("llm_copy", f"{task}->{jobs[i].target_lang}: output repeats the sample's "
                       f"{twin['provenance']['task']} {twin['text'][:80]!r}")  # fmt: skip
            if rej is not None:
                rejects.append(rej)
                self.rejected[rej[0]] = self.rejected.get(rej[0], 0) + 1
            elif entry is not None and len(accepted) < self.cfg.per_sample:
                accepted.append(entry)
                self.accepted += 1
        return accepted, rejects

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()
        if self.server is not None:
            self.server.stop()
            self.server = None
        c = self.cache
        log.info(
            "LLM augmentation: %d accepted, rejected %s, cache %d hits / %d misses, %d requests",
            self.accepted, self.rejected, c.hits, c.misses, self.client.requests_sent,
        )  # fmt: skip


def _seed(*parts: Any) -> int:
    return stable_seed(*parts) & 0x7FFFFFFF


def _english_caption(meta: dict[str, Any], texts: list[dict[str, Any]]) -> str | None:
    """The caption to paraphrase/translate: a corpus caption in English, else the English
    template, else the label text. Transcripts are never paraphrased (their words must stay)."""
    task = str((meta.get("attributes") or {}).get("task") or "")
    originals = [
        t for t in texts if t.get("kind") == "original" and base_lang(t.get("lang")) in ("en", None)
    ]
    if task == "caption" and originals:
        return originals[0]["text"]
    for t in texts:
        if t.get("kind") == "template" and t.get("lang") == "en":
            return t["text"]
    for t in originals:
        if (t.get("provenance") or {}).get("source") == "labels":
            return t["text"]
    return None


def _facts_line(meta: dict[str, Any], en: Any) -> str:
    facts = facts_of(meta, set(en.emotions))
    parts = []
    if facts.kind == "sound":
        parts.append(
            "sounds: " + ", ".join(en.labels.get(x, x.replace("_", " ")) for x in facts.labels)
        )
    elif facts.kind in ("speech", "keyword"):
        who = {"female": "a woman", "male": "a man"}.get(facts.gender, "a person")
        parts.append(f"speaker: {who}")
        if facts.spoken_lang:
            parts.append(f"language: {en.languages.get(facts.spoken_lang, facts.spoken_lang)}")
        if facts.emotion:
            parts.append(f"emotion: {facts.emotion}")
        if facts.transcript:
            parts.append(f'words spoken: "{facts.transcript}"')
    return "; ".join(parts)
