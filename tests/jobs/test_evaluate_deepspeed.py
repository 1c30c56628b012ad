"""jobs/evaluate.py on what the real pipeline produces: build_shards -> train_tokenizer ->
`deepspeed --num_gpus 2 jobs/pretrain.py` (CPU/gloo, ZeRO-2) -> evaluate the DeepSpeed
checkpoint directory and the fp32 export; both must give the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jobrun import build_and_tokenize, deepspeed, ds_env, ok, pretrain_args, python, run


@pytest.mark.slow
def test_deepspeed_checkpoint_and_export_evaluate_identically(
    tmp_path: Path, subprocess_env: dict[str, str], port: int
) -> None:
    env = ds_env(subprocess_env)
    shards, run_dir = tmp_path / "shards", tmp_path / "run"
    build_and_tokenize(shards, env, num_cpus=2)
    overrides = ["train.tensorboard=false", "train.max_steps=8", "train.save_every=8"]
    overrides += ["train.lr=0.01", "train.warmup_steps=1"]
    args = pretrain_args("configs/test_small.yaml", shards, run_dir, *overrides)
    ok(run(deepspeed(port, *args), env, timeout=600))
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    assert ckpts and (run_dir / "final" / "model.safetensors").is_file()
    out = tmp_path / "eval.json"
    p = run(
        python(
            "jobs/evaluate.py",
            "--checkpoint",
            str(ckpts[-1]),
            "--compare",
            str(run_dir / "final"),
            "--tasks",
            "configs/tasks/demo.yaml",
            "--only",
            "esc50_zero_shot",
            "--only",
            "audiocaps_val_retrieval",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
        ),
        env,
        timeout=600,
    )
    ok(p)
    assert "| checkpoint | random-init | previous |" in p.stdout
    res = json.loads(out.read_text())
    differs = 0
    for name, rec in res["tasks"].items():
        assert rec["metrics"], (name, rec["errors"])
        for metric, cols in rec["metrics"].items():
            assert cols["checkpoint"] == cols["previous"], (name, metric)  # ZeRO shards == export
            differs += cols["checkpoint"] != cols["random_init"]
    assert differs > 0  # trained weights were loaded, not a fresh init
