"""Running the project's entry scripts from tests: the real `deepspeed` launcher (2 CPU ranks,
gloo) or a plain single-rank `python` with env rendezvous, each in its own process group that
is killed whole when a run overruns its timeout (no rank or loader worker outlives a test)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import dataprep

REPO = Path(dataprep.__file__).resolve().parents[1]
DEEPSPEED = Path(sys.executable).parent / "deepspeed"


def ds_env(subprocess_env: dict[str, str]) -> dict[str, str]:
    """The test environment plus the shared JIT cache (DeepSpeed's shm_comm op compiles once):
    `make`'s TORCH_EXTENSIONS_DIR where set, else the repo's venv."""
    env = dict(subprocess_env)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".venv" / "torch_extensions"))
    return env


def single_rank(env: dict[str, str], port: int) -> dict[str, str]:
    """Env rendezvous of a one-process world: `python jobs/pretrain.py` without the launcher."""
    return dict(
        env,
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


def pretrain_args(cfg: Path | str, shards: Path, out: Path, *extra: str) -> list[str]:
    args = ["jobs/pretrain.py", "--config", str(cfg), "--shards", str(shards), "--out", str(out)]
    return [*args, *extra]


def deepspeed(port: int, *args: str) -> list[str]:
    """`deepspeed --num_gpus 2` on this machine's CPU accelerator (gloo), on a free port."""
    return [str(DEEPSPEED), "--num_gpus", "2", "--master_port", str(port), *args]


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def launch(cmd: list[str], env: dict[str, str], merged: bool = True) -> subprocess.Popen:
    """Start ``cmd`` in the repo in a new process group; stderr merged into stdout unless
    ``merged`` is false."""
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run(cmd: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``cmd`` to completion (stdout and stderr apart); on timeout the whole process group
    (launcher, ranks, loader workers) is killed before the error propagates."""
    p = launch(cmd, env, merged=False)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(p)
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def kill(p: subprocess.Popen) -> None:
    """SIGKILL the process group of ``p`` (started with ``start_new_session``) and reap it."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait()


def ok(p: subprocess.CompletedProcess) -> str:
    """stdout + stderr of a run that must have exited 0 (our own error lines first on failure)."""
    text = (p.stdout or "") + (p.stderr or "")
    assert p.returncode == 0, digest(text)
    return text


def digest(text: str) -> str:
    """Our own error lines first (the launcher's noise pushes them out of a plain tail)."""
    ours = [ln for ln in text.splitlines() if "pretrain:" in ln or "Error" in ln or "rank0]" in ln]
    return "\n".join(ours[-30:]) + "\n...\n" + text[-2000:]


def metrics(out: Path) -> list[dict]:
    """Rows of a run's ``metrics.jsonl``."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(ln) for ln in lines if ln.strip()]


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(out) if "loss" in r}


def build_and_tokenize(shards: Path, env: dict[str, str], num_cpus: int = 1) -> None:
    """`build_shards.py` on configs/test_small.yaml (the bundled corpora, paths relative to the
    repo), then `train_tokenizer.py` on the built set (a 300-piece multilingual vocabulary)."""
    build = ["pipelines/build_shards.py", "--config", "configs/test_small.yaml"]
    ok(run(python(*build, "--num-cpus", str(num_cpus), "--out", str(shards)), env, timeout=300))
    tok = ["pipelines/train_tokenizer.py", "--shards", str(shards), "--vocab-size", "300"]
    ok(run(python(*tok, "--out", str(shards / "tokenizer.model")), env, timeout=120))
