"""Weighted epochs (issue 17): temperature sampling over real shards built by the real build.

One build of the bundled corpora (esc50, audiocaps, commonvoice in many languages) per module,
through ``pipelines/build_shards.py``; every test reads it with the real ShardLoader.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import ValidationError

from dataprep.core.config import ConfigError, LoaderConfig, SamplingConfig
from dataprep.core.shards import INDEX
from dataprep.loader import ShardLoader, ShardSet
from dataprep.loader.sampling import NO_LANG, epoch_draws, open_plan, weighted_segments
from model.config import ExperimentConfig, load_config

REPO = Path(__file__).resolve().parents[2]
FEATURES = ExperimentConfig().features.model_copy(update={"n_mels": 64})


@pytest.fixture(scope="module")
def split(tmp_path_factory, subprocess_env) -> Path:
    tmp = tmp_path_factory.mktemp("sampling")
    cfg = yaml.safe_load((REPO / "configs" / "test_small.yaml").read_text())
    cfg["build"]["corpora"][2]["max_items"] = 60  # commonvoice: 60 clips in many languages
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp / "shards"
    cmd = [
        sys.executable, "pipelines/build_shards.py", "--config", str(tmp / "c.yaml"),
        "--out", str(out), "--num-cpus", "2", "build.splits.val_fraction=0",
        "build.splits.test_fraction=0",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=REPO, env=subprocess_env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "train"


def data_langs(split: Path) -> Counter[str]:
    t = pq.read_table(split / INDEX, columns=["lang"]).to_pydict()
    return Counter(str(x or NO_LANG) for x in t["lang"])


def loader(split: Path, sampling: SamplingConfig, **kw) -> ShardLoader:
    cfg = LoaderConfig(sampling=sampling, shuffle_buffer=8)
    args = {"features": FEATURES, "tokenize": None, "max_frames": 64, "batch_size": 4, **kw}
    return ShardLoader.from_config(cfg, split, **args)


def test_alpha_flattens_the_language_distribution(split: Path) -> None:
    langs = data_langs(split)
    assert len(langs) >= 5 and NO_LANG in langs  # esc50 has no language
    shard_set = ShardSet.open(split)
    flat = open_plan(shard_set, SamplingConfig(by="lang", alpha=0.3), seed=0).probs
    prop = open_plan(shard_set, SamplingConfig(by="lang", alpha=1.0), seed=0).probs
    n = sum(langs.values())
    assert all(abs(prop[g] - langs[g] / n) < 1e-9 for g in langs)  # alpha 1: the data's share
    rare, common = min(langs, key=langs.get), max(langs, key=langs.get)
    assert flat[rare] > prop[rare] and flat[common] < prop[common]
    want = {g: langs[g] ** 0.3 / sum(v**0.3 for v in langs.values()) for g in langs}
    assert all(abs(flat[g] - want[g]) < 1e-9 for g in langs)


def test_epoch_draws_split_over_ranks_and_workers_without_duplicates(split: Path) -> None:
    shard_set = ShardSet.open(split)
    plan = open_plan(shard_set, SamplingConfig(by="lang", alpha=0.3, epoch_samples=150), seed=3)
    draws = epoch_draws(plan, shard_set.shards, epoch=1)
    assert len(draws) == 150 and len(set(draws)) == 150  # (shard, key, repeat) unique
    got = []
    for rank in range(2):
        for worker in range(3):
            for name, lo, hi, picks in weighted_segments(
                plan, shard_set.shards, epoch=1, rank=rank, world_size=2, worker=worker,
                num_workers=3,
            ):  # fmt: skip
                got += [(name, k, r) for k, reps in picks.items() for r in reps]
    assert sorted(got) == sorted(draws)
    # a rare language is drawn more often than it has samples: repeats, each with its own index
    by_key = Counter((s, k) for s, k, _ in draws)
    assert max(by_key.values()) > 1
    assert epoch_draws(plan, shard_set.shards, epoch=2) != draws  # a new draw per epoch


def test_loader_achieves_the_distribution_and_resumes_exactly(split: Path) -> None:
    sampling = SamplingConfig(by="lang", alpha=0.3, epoch_samples=120)
    full = loader(split, sampling, rank=0, world_size=2)
    keys = [(tuple(b["keys"]), tuple(b["texts"])) for b in full.iter_epoch()]
    keys += [(tuple(b["keys"]), tuple(b["texts"])) for b in full.iter_epoch()]
    assert len(keys) == 2 * 60 // 4
    # the achieved share per language, over both ranks, matches the planned quotas exactly
    other = loader(split, sampling, rank=1, world_size=2)
    for _ in range(2):
        list(other.iter_epoch())
    drawn = Counter(full._drawn) + Counter(other._drawn)
    expected = full.expected_shares()
    for name, share in full.draw_shares().items():
        assert abs(share - expected[name]) < 0.2, name
    total = sum(v for k, v in drawn.items() if k.startswith("lang/"))
    assert total == 240
    rare = min(data_langs(split).items(), key=lambda kv: kv[1])[0]
    assert drawn[f"lang/{rare}"] / total > data_langs(split)[rare] / sum(data_langs(split).values())
    # resume mid-epoch: the same batches (keys and captions) as the uninterrupted run
    first = loader(split, sampling, rank=0, world_size=2)
    it = first.iter_epoch()
    head = [(tuple(b["keys"]), tuple(b["texts"])) for _, b in zip(range(5), it)]
    state = first.state_dict()
    resumed = loader(split, sampling, rank=0, world_size=2)
    resumed.load_state_dict(state)
    tail = [(tuple(b["keys"]), tuple(b["texts"])) for b in resumed.iter_epoch()]
    tail += [(tuple(b["keys"]), tuple(b["texts"])) for b in resumed.iter_epoch()]
    assert head + tail == keys
    assert resumed.draw_shares() == full.draw_shares()


def test_bad_sampling_input_is_refused_before_training(split: Path, tmp_path: Path) -> None:
    for alpha in (0.0, 1.5, -1):
        with pytest.raises(ValidationError, match=r"alpha must be in \(0, 1\]"):
            SamplingConfig(by="lang", alpha=alpha)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("loader: {sampling: {by: lang, alpha: 0}}\n")
    with pytest.raises(ConfigError, match="alpha"):
        load_config(cfg)
    with pytest.raises(ConfigError, match=r"language 'xx'.*does not contain"):
        loader(split, SamplingConfig(by="lang", lang_weights={"xx": 2.0, "en": 1.0}))
    with pytest.raises(ConfigError, match=r"corpus 'nope'"):
        loader(split, SamplingConfig(by="corpus", corpus_weights={"nope": 2.0}))
    with pytest.raises(ValidationError, match="weights must be > 0"):
        SamplingConfig(by="lang", lang_weights={"en": 0.0})
    # by: none would silently ignore a weighting: refused, naming what was set
    for kw in ({"alpha": 0.3}, {"lang_weights": {"en": 2.0}}, {"epoch_samples": 10}):
        with pytest.raises(ValidationError, match=f"{next(iter(kw))} set with by: none"):
            SamplingConfig(**kw)
    cfg.write_text("loader: {sampling: {alpha: 0.5, corpus_weights: {esc50: 2}}}\n")
    with pytest.raises(ConfigError, match="alpha, corpus_weights set with by: none"):
        load_config(cfg)
    # a multiplier moves the share; unweighted (by: none) and eval loaders read each sample once
    base = open_plan(ShardSet.open(split), SamplingConfig(by="lang"), 0).probs
    up = open_plan(ShardSet.open(split), SamplingConfig(by="lang", lang_weights={"en": 3.0}), 0)
    assert up.probs["en"] > base["en"]
    plain = loader(split, SamplingConfig(by="lang"), train=False)
    assert plain.spec.draws is None
    assert sorted(k for b in plain.iter_epoch() for k in b["keys"]) == sorted(
        pq.read_table(split / INDEX, columns=["key"]).to_pydict()["key"]
    )


def test_quality_report_sampling_section_matches_the_loader(split: Path) -> None:
    from dataprep.report.collect import sampling_section

    sampling = SamplingConfig(by="lang", alpha=0.3, lang_weights={"en": 2.0})
    section = sampling_section(split.parent, sampling)
    expected = loader(split, sampling).expected_shares()
    for kind in ("lang", "corpus"):
        rows = section[f"by_{kind}"]
        assert abs(sum(r["draw_share"] for r in rows.values()) - 1) < 1e-5
        for name, r in rows.items():
            assert abs(r["draw_share"] - expected[f"draws_{kind}_{name}"]) < 1e-5, name
    langs = data_langs(split)
    assert {k: r["samples"] for k, r in section["by_lang"].items()} == dict(langs)
    assert section["by_lang"]["en"]["weight"] == 2.0 and section["by_lang"]["en"]["hours"] > 0
    assert section["by_corpus"]["commonvoice"]["speakers"] > 1
    plain = sampling_section(split.parent, SamplingConfig())  # by none: the data's shares
    assert all(r["draw_share"] == r["data_share"] for r in plain["by_lang"].values())


def test_language_tags_follow_each_chosen_texts_language(split: Path, tmp_path: Path) -> None:
    """The loader tells the tokenizer each chosen text's own language (an English template
    caption of German speech is English); with ``model.text.lang_tags`` that language's tag
    follows bos in every row, as make_tokenize adds it at evaluation and inference."""
    from dataprep.loader import iter_shard_texts
    from model.config import TextEncoderConfig
    from model.tokenizer import BOS_ID, Tokenizer, make_tokenize, train_tokenizer

    pairs = list(iter_shard_texts(split, langs=True))
    train_tokenizer([t for _, t in pairs], tmp_path / "t.model", vocab_size=600,
                    langs=[g for g, _ in pairs], lang_tags=True)  # fmt: skip
    tok = Tokenizer(tmp_path / "t.model")
    tokenize = make_tokenize(tok, TextEncoderConfig(lang_tags=True, max_len=32))
    langs_of: dict[str, set[str]] = {}
    for g, t in pairs:
        langs_of.setdefault(t, set()).add(g)
    ld = loader(split, SamplingConfig(by="lang", alpha=0.5), tokenize=tokenize)
    rows = other = 0
    for batch in ld.iter_epoch():
        for i, (text, lang, audio_lang) in enumerate(
            zip(batch["texts"], batch["text_langs"], batch["langs"])
        ):
            assert lang in langs_of[text], (text, lang)
            assert batch["ids"][i, 0] == BOS_ID
            if lang:
                assert batch["ids"][i, 1] == tok.tag_id(lang)
            else:  # a text without a language: no tag
                assert int(batch["ids"][i, 1]) not in tok.lang_tags.values()
            rows += 1
            other += bool(lang and audio_lang and lang != audio_lang)
    assert rows >= 20 and other >= 1  # some caption's language is not its audio's
