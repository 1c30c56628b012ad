"""The walking skeleton end to end through the real entry points:

build shards (embedded Ray) -> sentencepiece tokenizer -> `deepspeed --num_gpus 2` pretrain
(2 CPU processes, gloo, ZeRO-2, 2 steps) -> evaluate, asserting on the artifacts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import free_port

from dataprep.core import atomic, shards, tario

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(cmd: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return proc


@pytest.mark.slow
def test_build_train_evaluate(tmp_path, subprocess_env):
    env = dict(subprocess_env)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".venv" / "torch_extensions"))
    out = tmp_path / "shards"
    run(
        [
            sys.executable,
            "pipelines/build_shards.py",
            "--config",
            "configs/test_small.yaml",
            "--out",
            str(out),
            "--num-cpus",
            "2",
        ],
        env,
    )
    # shards: sha256 matches shards.json; index rows == samples in tars (minus excluded dups)
    for split in ("train", "val", "test"):
        if not (out / split).exists():
            continue
        meta = json.loads((out / split / shards.SHARDS_JSON).read_text())
        n_tar = 0
        for entry in meta["shards"]:
            assert atomic.sha256_file(out / split / entry["name"]) == entry["sha256"]
            n_tar += sum(1 for _ in tario.iter_tar_members(out / split / entry["name"]))
        assert pq.read_metadata(out / split / shards.INDEX).num_rows == n_tar - len(meta["exclude"])

    tok = out / "tokenizer.model"
    run(
        [
            sys.executable,
            "pipelines/train_tokenizer.py",
            "--shards",
            str(out),
            "--out",
            str(tok),
            "--vocab-size",
            "300",
        ],
        env,
    )
    assert tok.stat().st_size > 0

    run_dir = tmp_path / "run"
    proc = run(
        [
            str(BIN / "deepspeed"),
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            "jobs/pretrain.py",
            "--config",
            "configs/test_small.yaml",
            "--shards",
            str(out),
            "--out",
            str(run_dir),
            "train.max_steps=2",
            "train.zero_stage=2",
        ],
        env,
    )
    final = run_dir / "final"
    assert final.is_dir(), proc.stdout[-2000:]

    from model.weights import load_for_eval

    model, cfg, tokenizer = load_for_eval(final)
    assert sum(p.numel() for p in model.parameters()) > 0 and cfg.train.zero_stage == 2

    res = tmp_path / "eval" / "results.json"
    run(
        [
            sys.executable,
            "jobs/evaluate.py",
            "--checkpoint",
            str(final),
            "--tasks",
            "configs/tasks/demo.yaml",
            "--out",
            str(res),
        ],
        env,
    )
    results = json.loads(res.read_text())
    text = json.dumps(results)
    for metric in ("R@1", "R@5", "acc"):
        assert metric in text, f"{metric} missing from eval JSON"
    assert (res.parent / "results.md").exists()
