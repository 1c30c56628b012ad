"""End to end on shards from the real builder: build_shards.py -> train_tokenizer.py ->
`deepspeed --num_gpus 2 jobs/pretrain.py` (CPU, gloo) -> load_for_eval on the final export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import free_port
from jobrun import (
    build_and_tokenize,
    deepspeed,
    ds_env,
    metrics,
    ok,
    pretrain_args,
    python,
    run,
    single_rank,
)


@pytest.mark.slow
def test_build_tokenize_train_export(
    tmp_path: Path, corpora_root: Path, subprocess_env: dict[str, str]
) -> None:
    env = ds_env(subprocess_env)
    shards = tmp_path / "shards"
    # configs/test_small.yaml reads the bundled corpora (the corpora_root fixture) relative to REPO
    build_and_tokenize(shards, env)
    out = tmp_path / "run"
    overrides = ["train.max_steps=4", "loader.num_workers=1", "train.zero_stage=3"]
    # issue 17: temperature sampling over languages
    overrides += ["loader.sampling.by=lang", "loader.sampling.alpha=0.3"]
    args = pretrain_args("configs/test_small.yaml", shards, out, *overrides)
    text = ok(run(deepspeed(free_port(), *args), env, timeout=300))
    steps = [r for r in metrics(out) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for key in (
        "loss",
        "temperature",
        "lr",
        "grad_norm",
        "samples_per_s",
        "audio_hours_per_s",
        "data_wait_s",
        "rss_max_gb",
    ):
        assert all(isinstance(r[key], float) for r in steps), key
    assert any("val_a2t_r1" in r for r in metrics(out))
    # the achieved share of draws per corpus and language is logged (each kind sums to 1)
    for kind in ("draws_corpus_", "draws_lang_"):
        got = {k: v for k, v in steps[-1].items() if k.startswith(kind)}
        assert len(got) > 1 and abs(sum(got.values()) - 1) < 1e-6, kind
    assert "loader.sampling by=lang alpha=0.3" in text  # the plan is logged
    assert list((out / "tb").iterdir()), "TensorBoard event file"

    from model.weights import load_for_eval

    model, cfg, tokenizer = load_for_eval(out / "final")
    assert (out / "final" / "tokenizer.model").read_bytes() == (
        shards / "tokenizer.model"
    ).read_bytes()
    ids, mask = tokenizer.encode_batch(["a dog barks", "世界"], cfg.model.text.max_len)
    mel = torch.zeros(1, cfg.features.n_mels, 64)
    with torch.no_grad():
        assert model.encode_text(ids, mask).shape == (2, cfg.model.embed_dim)
        assert model.encode_audio(mel, torch.tensor([64])).shape == (1, cfg.model.embed_dim)


@pytest.mark.slow
def test_language_tags_from_training_to_the_export(
    tmp_path: Path, corpora_root: Path, subprocess_env: dict[str, str]
) -> None:
    """issue 17: with ``model.text.lang_tags`` the trainer trains its own tokenizer with a tag per
    language of the training texts, the loader's worker process tags every caption by its own
    language (an unknown one would stop the run), and the export tags as the API reads it."""
    from dataprep.loader import iter_shard_texts
    from model import CLAP
    from model.tokenizer import tag_langs

    env = ds_env(subprocess_env)
    shards, out = tmp_path / "shards", tmp_path / "run"
    build = ["pipelines/build_shards.py", "--config", "configs/test_small.yaml", "--num-cpus", "1"]
    ok(run(python(*build, "--out", str(shards)), env, timeout=300))
    overrides = ["model.text.lang_tags=true", "model.text.vocab_size=400", "train.max_steps=2"]
    args = pretrain_args("configs/test_small.yaml", shards, out, *overrides, "loader.num_workers=1")
    text = ok(run(python(*args), single_rank(env, free_port()), timeout=300))
    assert "no tokenizer in the shard set: training one" in text
    want = tag_langs(g for g, _ in iter_shard_texts(shards / "train", langs=True))
    m = CLAP.from_pretrained(out / "final", device="cpu")
    assert len(want) >= 3 and sorted(m.tokenizer.lang_tags) == want  # e.g. ar, de, en
    other = next(x for x in want if x != "en")
    ids, _ = m.tokenize(["a spoken sentence", "a dog barks"], langs=[other, None])
    assert ids[0, 1] == m.tokenizer.lang_tags[other]
    assert int(ids[1, 1]) not in m.tokenizer.lang_tags.values()
    assert m.embed_text(["a spoken sentence"], lang=other).shape == (1, m.embed_dim)
