"""model.training.init_distributed destroys its process group on every way out of a job.

A gloo group left to interpreter finalization aborts a finished job with SIGABRT ("terminate
called without an active exception", pytorch#190489; it failed CI once, in the SLURM two-node
test). The child below is a real single-rank gloo group on loopback (DeepSpeed's init, as the
trainer runs it); a hook registered *before* the init runs *after* the trainer's (atexit is
last-in first-out) and reports whether the group is still up at that point.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import free_port

CHILD = """
import atexit, sys
import torch, torch.distributed as dist
atexit.register(lambda: print("initialized at exit:", dist.is_initialized(), flush=True))
from model.training import init_distributed
rank, world = init_distributed("gloo")
t = torch.ones(3)
dist.all_reduce(t)
print("rank", rank, "world", world, "sum", float(t.sum()), flush=True)
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize("code", [0, 2])  # the normal end, and fail()'s sys.exit(2)
def test_process_group_destroyed_at_exit(subprocess_env, code: int) -> None:
    env = dict(
        subprocess_env,
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "rank 0 world 1 sum 3.0" in proc.stdout
    assert "initialized at exit: False" in proc.stdout, proc.stdout
