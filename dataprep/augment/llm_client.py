"""The HTTP side of LLM caption augmentation: one bounded request loop and the disk cache.

- :class:`ChatClient` posts to ``/v1/chat/completions`` with ``httpx`` (one pooled client,
  thread-safe) and gives each job one ``tenacity`` retry budget: at most ``max_retries + 1``
  attempts per job, whatever fails (HTTP 5xx/408/409/429, timeouts, refused or dropped
  connections, a reply that is not an OpenAI response, or a reply that is not the JSON caption
  asked for). The old client retried transport errors inside a loop that retried bad JSON, so
  one job could send ``(r + 1)**2`` requests; here the bound is exact and tested.
- Transport failures wait ``backoff_s * 2**n`` (plus up to ``backoff_s`` of random jitter, so
  concurrent jobs do not retry in lockstep); a bad reply is retried at once with the next seed.
- A request ends within about ``2 * timeout_s``: httpx's timeout bounds each connect/read, and
  the body is streamed against a deadline, so a server that trickles bytes (each read on time,
  the whole reply never) is cut off too. Replies over ``MAX_REPLY_BYTES`` are refused.
- :class:`DiskCache`: one JSON file per request key, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import tenacity

from dataprep.core.atomic import atomic_write_json

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 1 << 20  # a chat reply for one caption is a few hundred bytes
# Statuses worth another attempt: overload, rate limit, gateway trouble. Other 4xx are ours.
RETRY_STATUS = frozenset({408, 409, 429})


class LLMError(Exception):
    """A request that failed; ``reason`` is the reject reason, ``retry`` whether to try again."""

    def __init__(self, reason: str, detail: str, retry: bool = False) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retry = retry


class BadReply(Exception):
    """The server answered, but not with what was asked: retried at once with the next seed.

    ``result`` is what the caller returns when the budget ends on such a reply.
    """

    def __init__(self, result: Any) -> None:
        super().__init__("reply rejected, retrying with the next seed")
        self.result = result


class _Backoff:
    """tenacity wait: exponential with jitter after a transport failure, none after a bad reply
    (the server is fine; only the sampled text was not)."""

    def __init__(self, backoff_s: float) -> None:
        self.expo = tenacity.wait_exponential_jitter(
            multiplier=backoff_s, exp_base=2, jitter=backoff_s, max=max(backoff_s, 30.0)
        )

    def __call__(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return 0.0 if isinstance(exc, BadReply) else self.expo(state)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, BadReply) or (isinstance(exc, LLMError) and exc.retry)


def run_with_budget(attempt: Callable[[int], Any], max_retries: int, backoff_s: float) -> Any:
    """``attempt(n)`` (n = bad replies so far, i.e. the seed index) under one budget of
    ``max_retries + 1`` attempts, for every backend. It raises :class:`LLMError` (``retry``
    decides) or :class:`BadReply`; the last failure is returned (BadReply) or raised."""
    bad = {"n": 0}

    def once() -> Any:
        try:
            return attempt(bad["n"])
        except BadReply:
            bad["n"] += 1
            raise

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max_retries + 1),
        wait=_Backoff(backoff_s),
        retry=tenacity.retry_if_exception(_retryable),
        reraise=True,
    )
    try:
        return retrying(once)
    except BadReply as e:
        return e.result


class ChatClient:
    """``POST /v1/chat/completions``; see the module docstring for timeouts and retries."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float,
        max_retries: int,
        backoff_s: float,
        api_key: str | None = None,
        concurrency: int = 4,
    ) -> None:
        url = base_url.rstrip("/")
        self.url = (url if url.endswith("/v1") else url + "/v1") + "/chat/completions"
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.requests_sent = 0
        self._lock = threading.Lock()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            headers=headers,
            limits=httpx.Limits(max_connections=max(1, concurrency)),
            trust_env=False,  # a proxy from the environment must not sit between us and vLLM
        )

    def run(self, attempt: Callable[[int], Any]) -> Any:
        return run_with_budget(attempt, self.max_retries, self.backoff_s)

    def post(self, body: dict[str, Any]) -> str:
        """One request: the assistant message content, or :class:`LLMError`."""
        with self._lock:
            self.requests_sent += 1
        deadline = time.monotonic() + self.timeout_s
        try:
            with self.http.stream("POST", self.url, json=body) as r:
                payload = self._read(r, deadline)
        except httpx.TimeoutException as e:
            raise LLMError(
                "llm_timeout", f"no reply within {self.timeout_s:g} s ({type(e).__name__})", True
            ) from None
        except httpx.TransportError as e:
            raise LLMError("llm_http_error", f"{self.url}: {type(e).__name__}: {e}", True) from None
        try:
            reply = json.loads(payload)
            return str(reply["choices"][0]["message"]["content"] or "")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
            raise LLMError(
                "llm_bad_response", f"not an OpenAI chat response: {payload[:120]!r}", True
            ) from None

    def _read(self, r: httpx.Response, deadline: float) -> bytes:
        if r.status_code != 200:
            retry = r.status_code in RETRY_STATUS or r.status_code >= 500
            raise LLMError("llm_http_error", f"HTTP {r.status_code} from {self.url}", retry)
        chunks, size = [], 0
        for chunk in r.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_REPLY_BYTES:
                raise LLMError("llm_bad_response", f"reply over {MAX_REPLY_BYTES} bytes", True)
            if time.monotonic() > deadline:
                raise LLMError(
                    "llm_timeout", f"reply still streaming after {self.timeout_s:g} s", True
                )
        return b"".join(chunks)

    def close(self) -> None:
        self.http.close()


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
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
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
        atomic_write_json(self._path(key), entry)  # a kill never leaves half an entry
