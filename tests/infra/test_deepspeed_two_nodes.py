"""Two DeepSpeed "nodes" on one machine train a few steps through infra/deepspeed/launch.sh.

Real launcher, real rendezvous: the script is run twice, as it would be on two nodes under
SLURM or Kubernetes (no-ssh mode), with NODE_RANK 0 and 1, a two-line hostfile (one process per
"node") and the ZeRO-2 bf16 preset. Each node's `deepspeed --no_ssh --node_rank r` starts its
local rank; they meet at 127.0.0.1:<free port> and train with gloo on the CPU (the GPU preset's
settings are CPU-compatible; NCCL itself needs GPUs and is not exercised here).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dataprep"))
from conftest import free_port  # noqa: E402
from test_loader import make_shards  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "infra" / "deepspeed" / "launch.sh"

TINY = {
    "name": "tiny-2node",
    "model": {
        "embed_dim": 32,
        "audio": {
            "dim": 32,
            "depth": 1,
            "heads": 2,
            "patch_freq": 16,
            "patch_time": 16,
            "max_frames": 128,
        },
        "text": {"vocab_size": 512, "dim": 32, "depth": 1, "heads": 2, "max_len": 24},
    },
    "train": {
        "micro_batch": 4,
        "lr": 0.003,
        "warmup_steps": 1,
        "max_steps": 3,
        "save_every": 3,
        "log_every": 1,
        "tensorboard": False,
        "seed": 1,
    },
    "loader": {"num_workers": 0},
}


def _node(
    rank: int,
    hostfile: Path,
    port: int,
    cfg: Path,
    shards: Path,
    out: Path,
    env: dict[str, str],
    log: Path,
    preset: str,
) -> subprocess.Popen:
    node_env = dict(
        env,
        NO_SSH="1",
        NODE_RANK=str(rank),
        HOSTFILE=str(hostfile),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        PRESET=preset,
        PYTHON=sys.executable,
        DEEPSPEED=str(Path(sys.executable).parent / "deepspeed"),
    )
    fh = open(log, "w")  # noqa: SIM115 - the child owns it; read after it exits
    return subprocess.Popen(
        ["bash", str(LAUNCH), "--config", str(cfg), "--shards", str(shards), "--out", str(out)],
        cwd=REPO,
        env=node_env,
        stdout=fh,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.slow
# ds_zero3_offload is checked by DeepSpeed's config parser in test_manifests.py; running it here
# would first JIT-compile DeepSpeedCPUAdam (~5 min on 2 shared cores).
@pytest.mark.parametrize("preset, stage", [("ds_zero2_bf16", 2)])
def test_two_nodes_no_ssh_train_with_a_preset(
    tmp_path, corpora_root, subprocess_env, preset, stage
):
    shards = tmp_path / "shards"
    make_shards(corpora_root, shards, n_shards=2, limit=16)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    # Two "hosts" that are both this machine (ENVIRONMENT.md); slots=1: one rank per node.
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    out = tmp_path / "run"
    env = dict(subprocess_env, TORCH_EXTENSIONS_DIR=str(REPO / ".venv" / "torch_extensions"))
    port = free_port()
    nodes = [
        _node(r, hostfile, port, cfg, shards, out, env, tmp_path / f"node{r}.log", preset)
        for r in (0, 1)
    ]
    try:
        for p in nodes:
            p.wait(timeout=420)
    finally:
        for p in nodes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    logs = [(tmp_path / f"node{r}.log").read_text(errors="replace") for r in (0, 1)]
    for r, p in enumerate(nodes):
        assert p.returncode == 0, f"node {r} failed:\n{logs[r][-4000:]}"
        # each node's launcher started exactly its own local rank of a 2-node world
        assert f"nnodes=2, num_local_procs=1, node_rank={r}" in logs[r], logs[r][-3000:]
    # the preset reached the trainer: ZeRO-2, bf16, and one world of 2 ranks across the 2 nodes
    meta = json.loads((out / "final" / "meta.json").read_text())
    assert (
        meta["world_size"] == 2 and meta["zero_stage"] == stage and meta["precision"] == "bf16"
    ), meta
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = sorted({r["step"] for r in rows if "loss" in r})
    assert steps == [1, 2, 3], rows
    assert all(r["loss"] == r["loss"] and r["loss"] > 0 for r in rows if "loss" in r)  # finite
    assert (out / "final" / "model.safetensors").is_file()
