"""End to end on shards from the real builder: build_shards.py -> train_tokenizer.py ->
`deepspeed --num_gpus 2 jobs/pretrain.py` (CPU, gloo) -> load_for_eval on the final export."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dataprep

REPO = Path(dataprep.__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_build_tokenize_train_export(
    tmp_path: Path, corpora_root: Path, subprocess_env: dict[str, str]
) -> None:
    env = dict(subprocess_env, TORCH_EXTENSIONS_DIR=str(REPO / ".venv" / "torch_extensions"))
    shards = tmp_path / "shards"
    # configs/test_small.yaml reads the bundled corpora (the corpora_root fixture) relative to REPO
    build = subprocess.run(
        [
            sys.executable,
            "pipelines/build_shards.py",
            "--config",
            "configs/test_small.yaml",
            "--num-cpus",
            "1",
            "--out",
            str(shards),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    # the tokenizer CLI on the built set: multilingual captions on a 300-piece vocabulary
    tok = subprocess.run(
        [
            sys.executable,
            "pipelines/train_tokenizer.py",
            "--shards",
            str(shards),
            "--out",
            str(shards / "tokenizer.model"),
            "--vocab-size",
            "300",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert tok.returncode == 0 and (shards / "tokenizer.model").is_file(), tok.stderr[-2000:]
    out = tmp_path / "run"
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "deepspeed"),
            "--num_gpus",
            "2",
            "--master_port",
            str(_free_port()),
            "jobs/pretrain.py",
            "--config",
            "configs/test_small.yaml",
            "--shards",
            str(shards),
            "--out",
            str(out),
            "train.max_steps=4",
            "loader.num_workers=1",
            "train.zero_stage=3",
            "loader.sampling.by=lang",  # issue 17: temperature sampling over languages
            "loader.sampling.alpha=0.3",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
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
    assert any("val_a2t_r1" in r for r in rows)
    # the achieved share of draws per corpus and language is logged (each kind sums to 1)
    for kind in ("draws_corpus_", "draws_lang_"):
        got = {k: v for k, v in steps[-1].items() if k.startswith(kind)}
        assert len(got) > 1 and abs(sum(got.values()) - 1) < 1e-6, kind
    assert "loader.sampling by=lang alpha=0.3" in run.stdout + run.stderr  # the plan is logged
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
