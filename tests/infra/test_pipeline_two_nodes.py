"""From the real pipeline to a two-"node" DeepSpeed run: build_shards.py -> train_tokenizer.py ->
two `deepspeed --hostfile H --no_ssh --node_rank r` launchers training configs/test_small.yaml.

Complements test_deepspeed_two_nodes.py (which goes through infra/deepspeed/launch.sh with
presets on synthetic loader shards): here the shards come from `pipelines/build_shards.py`
(embedded Ray, one CPU) and the tokenizer from `pipelines/train_tokenizer.py`, and the launcher
is called exactly as a user would on two machines, with the experiment config unchanged except
`train.max_steps`. Both "nodes" are this machine (hostfile `localhost` / `127.0.0.1`, one slot
each, ENVIRONMENT.md's verified recipe); the ranks meet at 127.0.0.1:<free port> over gloo.
Every process started here runs in its own session and is killed by process group on failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CONFIG = "configs/test_small.yaml"


def _run(cmd: list[str], env: dict[str, str], log: Path, timeout_s: float) -> int:
    """Run in a new session, output to a file; on timeout kill the whole process group."""
    with open(log, "w") as fh:
        p = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise


@pytest.fixture(scope="module")
def built(tmp_path_factory, subprocess_env):
    """A shard set built by the real builder, with a tokenizer beside it (built once)."""
    root = tmp_path_factory.mktemp("pipeline")
    shards = root / "shards"
    log = root / "build.log"
    rc = _run(
        [
            sys.executable,
            "pipelines/build_shards.py",
            "--config",
            CONFIG,
            "--out",
            str(shards),
            "--num-cpus",
            "1",
        ],
        dict(subprocess_env),
        log,
        timeout_s=300,
    )
    assert rc == 0, log.read_text(errors="replace")[-4000:]
    record = json.loads((shards / "build.json").read_text())
    assert record["counts"]["train"]["samples"] > 0, record["counts"]
    log = root / "tokenizer.log"
    rc = _run(
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
        dict(subprocess_env),
        log,
        120,
    )
    assert rc == 0 and (shards / "tokenizer.model").is_file(), log.read_text(errors="replace")[
        -3000:
    ]
    return shards


@pytest.mark.slow
def test_two_node_deepspeed_trains_on_built_shards(built, tmp_path, subprocess_env):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    out = tmp_path / "run"
    port = free_port()
    env = dict(subprocess_env, TORCH_EXTENSIONS_DIR=str(REPO / ".venv" / "torch_extensions"))
    logs = [tmp_path / f"node{r}.log" for r in (0, 1)]
    procs = []
    try:
        for rank, log in enumerate(logs):
            cmd = [
                str(BIN / "deepspeed"),
                "--hostfile",
                str(hostfile),
                "--no_ssh",
                "--node_rank",
                str(rank),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                "jobs/pretrain.py",
                "--config",
                CONFIG,
                "--shards",
                str(built),
                "--out",
                str(out),
                "train.max_steps=2",
            ]
            fh = open(log, "w")  # noqa: SIM115 - the child writes it; closed after wait below
            procs.append(
                (
                    subprocess.Popen(
                        cmd,
                        cwd=REPO,
                        env=env,
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    ),
                    fh,
                )
            )
        for p, _ in procs:
            p.wait(timeout=300)
    finally:
        for p, fh in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            fh.close()
    text = [log.read_text(errors="replace") for log in logs]
    for rank, (p, _) in enumerate(procs):
        assert p.returncode == 0, f"node {rank} failed:\n{text[rank][-4000:]}"
        # each launcher started only its own node's rank of a two-node world
        assert f"nnodes=2, num_local_procs=1, node_rank={rank}" in text[rank], text[rank][-3000:]
    assert "world size 2" in text[0], text[0][-3000:]  # rank 0's log line from jobs/pretrain.py
    meta = json.loads((out / "final" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 2, meta
    assert meta["zero_stage"] == 2  # configs/test_small.yaml's train.zero_stage
    assert (out / "final" / "model.safetensors").is_file()
    # the tokenizer next to the shards was used and exported with the weights, not retrained
    assert (out / "final" / "tokenizer.model").read_bytes() == (
        built / "tokenizer.model"
    ).read_bytes()
    assert not (out / "tokenizer.model").exists()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert sorted(losses) == [1, 2] and all(0 < v < float("inf") for v in losses.values()), rows


# Stand-ins for SLURM's tools, as in test_manifests.py, but srun starts the per-node commands
# in parallel (a real rendezvous needs both nodes up at once) and fails if any node fails.
_SCONTROL = '#!/usr/bin/env bash\n[ "$1 $2" = "show hostnames" ] && tr , "\\n" <<< "$3"\n'
_SRUN = """#!/usr/bin/env bash
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i=0; i<SLURM_JOB_NUM_NODES; i++)); do SLURM_NODEID=$i "$@" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
exit $rc
"""


@pytest.mark.slow
def test_sbatch_script_trains_on_two_nodes(built, tmp_path, subprocess_env):
    """infra/slurm/pretrain.sbatch for real (not a dry run) on a fake two-node allocation.

    SLURM cannot run here; `scontrol`/`srun` are the stand-ins above. Everything after them is
    the real path: the script's hostfile, launch.sh's default preset (ZeRO-2 bf16) and one
    no-ssh DeepSpeed launcher per node, meeting at the first host of the allocation.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", _SCONTROL), ("srun", _SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    out, logs = tmp_path / "run", tmp_path / "logs"
    env = dict(
        subprocess_env,
        PATH=f"{bin_dir}{os.pathsep}{subprocess_env['PATH']}",
        SLURM_JOB_NUM_NODES="2",
        SLURM_JOB_NODELIST="127.0.0.1,localhost",
        SLURM_JOB_ID="77",
        SLURM_GPUS_ON_NODE="1",
        SLURM_SUBMIT_DIR=str(REPO),
        LOG_DIR=str(logs),
        VENV=str(REPO / ".venv"),
        MASTER_PORT=str(free_port()),
        PYTHON=sys.executable,
        DEEPSPEED=str(BIN / "deepspeed"),
        OMP_NUM_THREADS="1",
        TORCH_EXTENSIONS_DIR=str(REPO / ".venv" / "torch_extensions"),
    )
    log = tmp_path / "sbatch.log"
    rc = _run(
        [
            "bash",
            "infra/slurm/pretrain.sbatch",
            "--config",
            CONFIG,
            "--shards",
            str(built),
            "--out",
            str(out),
            "train.max_steps=2",
        ],
        env,
        log,
        timeout_s=300,
    )
    text = log.read_text(errors="replace")
    assert rc == 0, text[-4000:]
    assert (logs / "hostfile-77").read_text() == "127.0.0.1 slots=1\nlocalhost slots=1\n"
    for rank in (0, 1):
        assert f"nnodes=2, num_local_procs=1, node_rank={rank}" in text, text[-3000:]
    meta = json.loads((out / "final" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 2, meta
    assert meta["zero_stage"] == 2 and meta["precision"] == "bf16", (
        meta
    )  # the script's default preset
