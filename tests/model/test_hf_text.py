"""transformers text towers (model.hf_text).

Models: TINY RANDOM GPT-2 / XLM-RoBERTa saved to tmp dirs by ``hf_helpers`` (random weights,
real loading code), and the packaged REAL pretrained all-MiniLM-L6-v2.
"""

from __future__ import annotations

import pickle

import pytest
import torch
from hf_helpers import tiny_gpt2, tiny_xlmr

from model.config import TextEncoderConfig
from model.hf_common import HFLoadError
from model.hf_text import HFText, HFTokenizer, last_token_index
from model.text_encoder import MiniLMText, minilm_path

TEXTS = ["A dog barks several times", "rain", "a man talks after a dog barks nearby and a car"]


@pytest.fixture(scope="module")
def gpt2_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt2")
    return {side: tiny_gpt2(root / side, padding_side=side) for side in ("right", "left")}


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory):
    return tiny_xlmr(tmp_path_factory.mktemp("xlmr"))


def test_gpt2_last_token_embedding_is_padding_side_and_length_invariant(gpt2_dirs):
    """TINY RANDOM GPT-2: the pooled vector is the last real token's hidden state, the same for
    right and left padding and any pad length, and equal to running each text alone."""
    tower = HFText(gpt2_dirs["right"]).eval()
    assert tower.decoder_only and tower.pooling == "last" and tower.out_dim == 32
    outs = {}
    for side, d in gpt2_dirs.items():
        tok = HFTokenizer(d)
        assert tok.padding_side == side
        for max_len in (48, 60):  # longer than every text: no truncation
            ids, mask = tok.encode_batch(TEXTS, max_len)
            assert ids.shape == (3, max_len)
            with torch.no_grad():
                outs[side, max_len] = tower(ids, mask)[0]
    ref = outs["right", 48]
    for v in outs.values():
        torch.testing.assert_close(v, ref, atol=1e-5, rtol=1e-5)
    tok = HFTokenizer(gpt2_dirs["right"])
    for i, text in enumerate(TEXTS):  # alone, no padding at all
        ids = tok._get()([text], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            alone = tower.model(input_ids=ids).last_hidden_state[0, -1]
        torch.testing.assert_close(ref[i], alone, atol=1e-5, rtol=1e-5)


def test_last_token_index_both_sides():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    assert last_token_index(mask).tolist() == [2, 4, 0]


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_encoder_poolings(xlmr_dir, pooling):
    """TINY RANDOM XLM-R: cls / mean / pooler read the right thing and ignore padding."""
    tower = HFText(xlmr_dir, pooling=pooling).eval()
    assert not tower.decoder_only
    tok = HFTokenizer(xlmr_dir)
    ids, mask = tok.encode_batch(TEXTS, 48)
    ids2, mask2 = tok.encode_batch(TEXTS, 60)  # both untruncated
    with torch.no_grad():
        pooled, tokens, tmask = tower(ids, mask)
        pooled2 = tower(ids2, mask2)[0]
        out = tower.model(input_ids=ids, attention_mask=mask.long())
    torch.testing.assert_close(pooled, pooled2, atol=1e-5, rtol=1e-5)
    want = {
        "cls": out.last_hidden_state[:, 0],
        "pooler": out.pooler_output,
        "mean": (out.last_hidden_state * mask[..., None]).sum(1) / mask.sum(1, keepdim=True),
    }
    torch.testing.assert_close(pooled, want[pooling], atol=1e-6, rtol=1e-6)
    assert tokens.shape == (3, 48, 32) and tmask.dtype == torch.bool


def test_max_length_comes_from_the_model(xlmr_dir):
    tok = HFTokenizer(xlmr_dir)  # saved model_max_length 64, positions 66 - 2
    assert tok.max_length(512) == 64 and tok.max_length(16) == 16
    ids, _ = tok.encode_batch(["word " * 200], 512)
    assert ids.shape == (1, 64)


def test_real_minilm_through_hf_text_equals_the_packaged_tower():
    """REAL pretrained all-MiniLM-L6-v2 (packaged): HFText with mean pooling gives exactly the
    existing MiniLM tower's sentence vectors."""
    path = minilm_path()
    ours = HFText(path, pooling="mean").eval()
    ref = MiniLMText(TextEncoderConfig(kind="minilm", dropout=0.0)).eval()
    ids, mask = HFTokenizer(path).encode_batch(TEXTS, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, mask)[0], ref(ids, mask)[0], atol=1e-6, rtol=1e-6)


def test_tokenizer_pickles_and_reloads(xlmr_dir):
    tok = HFTokenizer(xlmr_dir)
    back = pickle.loads(pickle.dumps(tok))
    assert back._tok is None
    assert torch.equal(back.encode_batch(TEXTS, 16)[0], tok.encode_batch(TEXTS, 16)[0])


def test_bad_directories_are_one_clear_error(tmp_path, xlmr_dir, gpt2_dirs):
    with pytest.raises(HFLoadError, match="not a transformers model directory"):
        HFText(tmp_path)
    with pytest.raises(HFLoadError, match="decoder-only"):
        HFText(gpt2_dirs["right"], pooling="cls")
    # A tokenizer whose ids do not fit the model: copy the GPT-2 tokenizer files next to a
    # config with a smaller vocabulary.
    import shutil

    bad = tmp_path / "mismatch"
    shutil.copytree(xlmr_dir, bad)
    for f in bad.glob("*token*"):
        f.unlink()
    for f in (gpt2_dirs["right"]).glob("*"):
        if f.is_file() and ("token" in f.name or f.name in {"vocab.json", "merges.txt"}):
            shutil.copy(f, bad / f.name)
    import json

    cfg = json.loads((bad / "config.json").read_text())
    cfg["vocab_size"] = 50
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HFLoadError, match="do not match"):
        HFTokenizer(bad)
