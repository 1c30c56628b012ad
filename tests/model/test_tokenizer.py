"""model.tokenizer + pipelines/train_tokenizer.py on the real multilingual fixture sentences."""

from __future__ import annotations

import csv
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer, train_tokenizer


def _sentences(corpora_root: Path) -> list[str]:
    out = []
    for tsv in sorted((corpora_root / "commonvoice_mini").glob("*/validated.tsv")):
        with open(tsv, newline="", encoding="utf-8") as f:
            out += [row["sentence"] for row in csv.DictReader(f, delimiter="\t")]
    return out


@pytest.fixture(scope="module")
def sentences(corpora_root: Path) -> list[str]:
    s = _sentences(corpora_root)
    assert len(s) > 50 and any("\u4e00" <= c <= "\u9fff" for t in s for c in t), (
        "multilingual fixture"
    )
    return s


@pytest.mark.parametrize("vocab", [300, 2000])
def test_train_encode_roundtrip(tmp_path: Path, sentences: list[str], vocab: int) -> None:
    out = tmp_path / "sp.model"
    summary = train_tokenizer(sentences, out, vocab_size=vocab)
    assert out.is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    tok = Tokenizer(out)
    assert summary["vocab_size"] == tok.vocab_size <= vocab
    ids, mask = tok.encode_batch(sentences[:8], 48)
    assert ids.shape == mask.shape == (8, 48) and ids.dtype.is_floating_point is False
    assert (ids[:, 0] == BOS_ID).all()
    assert ((ids == PAD_ID) == ~mask).all()
    for row, text in zip(ids.tolist(), sentences[:8]):
        if EOS_ID in row and row.index(EOS_ID) < 47:
            # every script round-trips, in-vocabulary or through byte fallback
            assert tok.decode(row).replace(" ", "") == " ".join(text.split()).replace(" ", "")


def test_truncation_keeps_eos_and_unseen_script_uses_bytes(
    tmp_path: Path, sentences: list[str]
) -> None:
    tok = Tokenizer(train_tokenizer(sentences, tmp_path / "sp.model", vocab_size=400)["out"])
    ids, mask = tok.encode_batch([" ".join(sentences[:5])], 10)
    assert ids[0, -1] == EOS_ID and mask[0].all()
    ids, mask = tok.encode_batch(["ᚠᚢᚦᚨᚱᚲ"], 32)  # runic: never seen, 3 bytes a character
    assert tok.decode(ids[0].tolist()) == "ᚠᚢᚦᚨᚱᚲ"
    assert 1 not in ids[0].tolist()  # no <unk>


def test_pickles_for_dataloader_workers(tmp_path: Path, sentences: list[str]) -> None:
    tok = Tokenizer(train_tokenizer(sentences, tmp_path / "sp.model", vocab_size=400)["out"])
    clone = pickle.loads(pickle.dumps(tok))
    a, _ = tok.encode_batch(sentences[:4], 32)
    b, _ = clone.encode_batch(sentences[:4], 32)
    assert (a == b).all()


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no texts"):
        train_tokenizer(["", "  \n "], tmp_path / "x.model")
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(["abc"], tmp_path / "x.model", vocab_size=100)
    with pytest.raises(FileNotFoundError, match="train_tokenizer.py"):
        Tokenizer(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises((ValueError, RuntimeError, OSError)):
        Tokenizer(tmp_path / "junk.model")
    assert not (tmp_path / "x.model").exists()


def test_cli(tmp_path: Path, repo_root: Path, subprocess_env: dict[str, str]) -> None:
    run = lambda *a: subprocess.run(
        [sys.executable, "pipelines/train_tokenizer.py", *a],
        cwd=repo_root,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run("--help").returncode == 0
    p = run("--shards", str(tmp_path), "--out", str(tmp_path / "t.model"))
    assert p.returncode == 2 and "shards.json is missing" in p.stderr


def test_resolution_rules_and_the_injected_tokenize(tmp_path: Path, sentences: list[str]) -> None:
    """tokenizer.path, else <shards>/tokenizer.model, else <out>/tokenizer.model to train; the
    loader/evaluator get a picklable callable cutting to model.text.max_len."""
    from model.config import TextEncoderConfig
    from model.tokenizer import load_tokenizer, make_tokenize, tokenizer_path

    shards, out = tmp_path / "shards", tmp_path / "out"
    shards.mkdir()
    assert tokenizer_path(None, shards, out) == (out / "tokenizer.model", True)
    train_tokenizer(sentences, out / "tokenizer.model", vocab_size=300)
    assert tokenizer_path(None, shards, out) == (out / "tokenizer.model", False)
    train_tokenizer(sentences, shards / "tokenizer.model", vocab_size=300)
    assert tokenizer_path(None, shards, out) == (shards / "tokenizer.model", False)
    assert tokenizer_path(out / "tokenizer.model", shards, out) == (out / "tokenizer.model", False)
    with pytest.raises(FileNotFoundError, match="tokenizer.path="):
        tokenizer_path(tmp_path / "nope.model", shards, out)

    text = TextEncoderConfig(vocab_size=300, max_len=12)
    tok = load_tokenizer(text, shards / "tokenizer.model")
    with pytest.raises(ValueError, match="model.text.vocab_size=100"):
        load_tokenizer(TextEncoderConfig(vocab_size=100), shards / "tokenizer.model")
    tokenize = pickle.loads(pickle.dumps(make_tokenize(tok, text)))
    ids, mask = tokenize(sentences[:3])
    assert ids.shape == mask.shape == (3, 12)
    assert torch.equal(ids, tok.encode_batch(sentences[:3], 12)[0])


def _by_locale(corpora_root: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for tsv in sorted((corpora_root / "commonvoice_mini").glob("*/validated.tsv")):
        with open(tsv, newline="", encoding="utf-8") as f:
            out[tsv.parent.name] = [row["sentence"] for row in csv.DictReader(f, delimiter="\t")]
    return out


def test_balanced_sample_follows_the_temperature(corpora_root: Path) -> None:
    from model.tokenizer import balanced_sample

    texts = ["a"] * 90 + ["b"] * 9 + ["c"]
    langs = ["en"] * 90 + ["de"] * 9 + ["sw"]
    _, same_langs = balanced_sample(texts, langs, 1.0)
    assert sorted(same_langs) == sorted(langs)  # alpha 1: the data's proportions
    flat, flat_langs = balanced_sample(texts, langs, 0.3)
    n = {g: flat_langs.count(g) for g in ("en", "de", "sw")}
    assert len(flat) == 100 and n["sw"] > 1 and n["en"] < 90
    want = {g: c**0.3 for g, c in (("en", 90), ("de", 9), ("sw", 1))}
    assert abs(n["sw"] - 100 * want["sw"] / sum(want.values())) <= 1
    assert balanced_sample(texts, langs, 0.3) == (flat, flat_langs)  # deterministic


def test_balanced_training_gives_a_minority_script_real_pieces(
    tmp_path: Path, corpora_root: Path
) -> None:
    """English-heavy text with a little Russian and Arabic (the demo's situation): with
    alpha 0.3 the minority scripts fall back to bytes less than with raw frequency."""
    from model.tokenizer import byte_fallback_rate

    loc = _by_locale(corpora_root)
    latin = [t for g in ("en", "de", "fr", "es") for t in loc[g]] * 4
    minority = {"ru": loc["ru"][:3], "ar": loc["ar"][:3]}
    texts = latin + minority["ru"] + minority["ar"]
    langs = ["xx"] * len(latin) + ["ru"] * 3 + ["ar"] * 3
    rates = {}
    for alpha in (1.0, 0.3):
        out = tmp_path / f"a{alpha}.model"
        train_tokenizer(texts, out, vocab_size=400, langs=langs, alpha=alpha)
        tok = Tokenizer(out)
        rates[alpha] = {g: byte_fallback_rate(tok, t) for g, t in minority.items()}
    for g in minority:
        assert rates[0.3][g] < rates[1.0][g], (g, rates)


def test_language_tags_are_single_pieces(tmp_path: Path, sentences: list[str]) -> None:
    from model.tokenizer import byte_fallback_rate, lang_tag

    out = tmp_path / "tags.model"
    train_tokenizer(sentences, out, vocab_size=400, lang_tags=["de", "sw"])
    tok = Tokenizer(out)
    for lang in ("de", "sw"):
        ids = tok.encode(lang_tag(lang))
        assert len([i for i in ids if tok.decode([i]).strip()]) == 1, ids
        assert byte_fallback_rate(tok, [lang_tag(lang)]) == 0.0
    assert tok.decode(tok.encode(lang_tag("de") + " hallo")).startswith("<lang:de>")


@pytest.fixture(scope="module")
def tagged(tmp_path_factory, sentences: list[str]) -> Tokenizer:
    """A tokenizer trained as jobs/pretrain.py trains one with ``model.text.lang_tags``: one tag
    piece per base language of the texts (``zh-CN`` and ``zh`` share ``<lang:zh>``)."""
    out = tmp_path_factory.mktemp("tagged") / "sp.model"
    langs = ["de", "sw", "zh-CN", "zh"] * (len(sentences) // 4) + ["de"] * (len(sentences) % 4)
    train_tokenizer(sentences, out, vocab_size=400, langs=langs, lang_tags=True)
    return Tokenizer(out)


def test_language_tags_come_first_and_round_trip(tagged: Tokenizer) -> None:
    from model.config import TextEncoderConfig
    from model.tokenizer import make_tokenize

    assert sorted(tagged.lang_tags) == ["de", "sw", "zh"]
    tokenize = make_tokenize(tagged, TextEncoderConfig(lang_tags=True, max_len=24))
    texts = ["hallo Welt", "habari ya asubuhi", "你好世界", "no language"]
    ids, mask = tokenize(texts, langs=["de", "sw", "zh-CN", ""])
    assert ids[:, 0].tolist() == [BOS_ID] * 4
    assert ids[:3, 1].tolist() == [tagged.lang_tags[x] for x in ("de", "sw", "zh")]
    assert ids[3, 1].item() not in tagged.lang_tags.values()  # no language: no tag, as in training
    for row, text in zip(ids[:3], texts):
        n = int((row != PAD_ID).sum())
        assert row[n - 1] == EOS_ID and tagged.decode(row[2 : n - 1].tolist()) == text
    # the tag survives truncation, the eos too; the same texts untagged differ by the tag only
    short, _ = tokenize(["hallo Welt " * 20], langs=["de"])
    assert short[0, 1] == tagged.lang_tags["de"] and short[0, -1] == EOS_ID
    plain, _ = make_tokenize(tagged, TextEncoderConfig(max_len=24))(texts, langs=["de"] * 4)
    assert plain[0, 1:].tolist()[:5] == ids[0, 2:7].tolist()  # langs ignored without lang_tags
    assert pickle.loads(pickle.dumps(tokenize))(texts[:1], langs=["de"])[0].equal(ids[:1])
    with pytest.raises(ValueError, match=r"no language tag for 'fr'.*tags: \['de', 'sw', 'zh'\]"):
        tokenize(["bonjour"], langs=["fr"])
    with pytest.raises(ValueError, match="1 languages for 2 texts"):
        tokenize(["a", "b"], langs=["de"])


def test_language_tag_config_is_checked(tmp_path: Path, sentences: list[str], tagged) -> None:
    from pydantic import ValidationError

    from model.config import TextEncoderConfig, load_config
    from model.tokenizer import lang_tag, load_tokenizer

    for kind in ("minilm", "hf"):
        with pytest.raises(ValidationError, match="text.lang_tags needs text.kind=transformer"):
            TextEncoderConfig(kind=kind, path="x", lang_tags=True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {text: {kind: minilm, lang_tags: true}}\n")
    from dataprep.core.config import ConfigError

    with pytest.raises(ConfigError, match="lang_tags needs text.kind=transformer"):
        load_config(cfg)
    plain = tmp_path / "plain.model"
    train_tokenizer(sentences, plain, vocab_size=400)
    with pytest.raises(ValueError, match=r"has no <lang:xx> pieces.*--lang-tags"):
        load_tokenizer(TextEncoderConfig(lang_tags=True), plain)
    assert load_tokenizer(TextEncoderConfig(lang_tags=True), tagged.path).lang_tags
    assert lang_tag("pt_BR") == "<lang:pt>"
    with pytest.raises(ValueError, match="no language tag for language code ''"):
        lang_tag("")
