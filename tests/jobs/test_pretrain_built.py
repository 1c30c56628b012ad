"""End to end on shards from the real builder: build_shards.py -> train_tokenizer.py ->
`deepspeed --num_gpus 2 jobs/pretrain.py` (CPU, gloo) -> load_for_eval on the final export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import free_port
from jobrun import build_and_tokenize, deepspeed, ds_env, metrics, ok, pretrain_args, run


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
