"""jobs/evaluate.py on what the real pipeline produces: build_shards -> train_tokenizer ->
`deepspeed --num_gpus 2 jobs/pretrain.py` (CPU/gloo, ZeRO-2) -> evaluate the DeepSpeed
checkpoint directory and the fp32 export; both must give the same numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEEPSPEED = Path(sys.executable).parent / "deepspeed"


def _run(cmd: list[str], env: dict[str, str], timeout: int = 600) -> str:
    p = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert p.returncode == 0, (cmd, p.stdout[-2000:], p.stderr[-3000:])
    return p.stdout


@pytest.mark.slow
def test_deepspeed_checkpoint_and_export_evaluate_identically(
    tmp_path: Path, subprocess_env: dict[str, str], port: int
) -> None:
    env = dict(subprocess_env)
    env["TORCH_EXTENSIONS_DIR"] = str(REPO / ".venv" / "torch_extensions")
    py = sys.executable
    shards, run = tmp_path / "shards", tmp_path / "run"
    _run(
        [
            py,
            "pipelines/build_shards.py",
            "--config",
            "configs/test_small.yaml",
            "--out",
            str(shards),
            "--num-cpus",
            "2",
        ],
        env,
    )
    _run(
        [
            py,
            "pipelines/train_tokenizer.py",
            "--shards",
            str(shards),
            "--out",
            str(shards / "tokenizer.model"),
            "--vocab-size",
            "300",
        ],
        env,
    )
    _run(
        [
            str(DEEPSPEED),
            "--num_gpus",
            "2",
            "--master_port",
            str(port),
            "jobs/pretrain.py",
            "--config",
            "configs/test_small.yaml",
            "--shards",
            str(shards),
            "--out",
            str(run),
            "train.tensorboard=false",
            "train.max_steps=8",
            "train.save_every=8",
            "train.lr=0.01",
            "train.warmup_steps=1",
        ],
        env,
    )
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    assert ckpts and (run / "final" / "model.safetensors").is_file()
    out = tmp_path / "eval.json"
    stdout = _run(
        [
            py,
            "jobs/evaluate.py",
            "--checkpoint",
            str(ckpts[-1]),
            "--compare",
            str(run / "final"),
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
        ],
        env,
    )
    assert "| checkpoint | random-init | previous |" in stdout
    res = json.loads(out.read_text())
    differs = 0
    for name, rec in res["tasks"].items():
        assert rec["metrics"], (name, rec["errors"])
        for metric, cols in rec["metrics"].items():
            assert cols["checkpoint"] == cols["previous"], (name, metric)  # ZeRO shards == export
            differs += cols["checkpoint"] != cols["random_init"]
    assert differs > 0  # trained weights were loaded, not a fresh init
