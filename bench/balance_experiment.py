"""Language balance, alpha = 1 vs alpha = 0.3, on the demo build (issue 17).

    python bench/balance_experiment.py --out /tmp/balance [--config configs/demo.yaml]
        [--steps 120] [--alphas 1.0 0.3] [--nproc 2] [--set key=value ...]

One shard build of ``--config`` (``pipelines/build_shards.py``), then one run per alpha with
the same steps, seed and data: ``deepspeed jobs/pretrain.py`` with ``loader.sampling.by=lang``
and ``loader.sampling.alpha=<a>`` (no time budget, so every arm gets ``--steps`` steps), then
``jobs/evaluate.py`` on ``bench/balance_tasks.yaml`` (per-language keyword spotting on the
held-out kws languages, multilingual speech <-> transcript retrieval on the Common Voice test
clips), the second arm as the checkpoint, the first as the ``--compare`` column. Printed: each
arm's expected share of training draws per language (``dataprep.loader.sampling.open_plan``),
the table with 95 % bootstrap intervals, stage wall times; all of it in ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "bench" / "balance_tasks.yaml"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(name: str, cmd: list[str], timings: dict[str, float]) -> None:
    print(f"=== [{name}] {' '.join(cmd)}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, check=False)
    timings[name] = round(time.perf_counter() - t, 1)
    if proc.returncode != 0:
        sys.exit(f"balance_experiment: {name} failed with exit code {proc.returncode}")


def _shares(config: str, overrides: list[str], shards: Path) -> dict[str, float]:
    from dataprep.loader import ShardSet
    from dataprep.loader.sampling import open_plan
    from model.config import load_config

    cfg = load_config(config, overrides)
    plan = open_plan(ShardSet.open(shards / "train"), cfg.loader.sampling, cfg.train.seed)
    return {k[5:]: round(v, 4) for k, v in plan.expected_shares().items() if k.startswith("lang/")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True)
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--alphas", type=float, nargs=2, default=[1.0, 0.3], help="two arms")
    p.add_argument("--nproc", type=int, default=2, help="deepspeed processes (CPU: gloo)")
    p.add_argument("--set", action="append", default=[], help="extra config override")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    py = sys.executable
    ds = str(Path(py).parent / "deepspeed")
    timings: dict[str, float] = {}
    shards = out / "shards"
    if not (shards / "train" / "shards.json").is_file():
        build = [py, "pipelines/build_shards.py", "--config", args.config, "--out", str(shards)]
        _run("build_shards", build, timings)
    summary: dict = {"steps": args.steps, "config": args.config, "arms": {}}
    for a in args.alphas:
        sets = [
            *args.set, "loader.sampling.by=lang", f"loader.sampling.alpha={a}",
            f"train.max_steps={args.steps}", f"train.save_every={args.steps}",
            "train.time_budget_s=100000",
        ]  # fmt: skip
        run = out / f"alpha_{a}"
        if not (run / "final" / "model.safetensors").is_file():
            cmd = [ds, "--num_gpus", str(args.nproc), "--master_port", str(_port()),
                   "jobs/pretrain.py", "--config", args.config, "--shards", str(shards),
                   "--out", str(run), *sets]  # fmt: skip
            _run(f"pretrain alpha={a}", cmd, timings)
        summary["arms"][str(a)] = {
            "checkpoint": str(run / "final"), "lang_shares": _shares(args.config, sets, shards),
        }  # fmt: skip
    # jobs/evaluate.py's columns: "checkpoint" = the second alpha, "previous" = the first
    first, last = args.alphas
    cmd = [py, "jobs/evaluate.py", "--checkpoint", str(out / f"alpha_{last}" / "final"),
           "--tasks", str(TASKS), "--out", str(out / "eval" / "results.json"),
           "--cache-dir", str(out / "eval_cache")]  # fmt: skip
    cmd += ["--compare", str(out / f"alpha_{first}" / "final")]
    _run("evaluate", cmd, timings)
    summary["timings_s"] = timings
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for a, arm in summary["arms"].items():
        print(f"alpha={a} expected share of draws per language: {arm['lang_shares']}")
    print(f"columns: checkpoint = alpha {last}, previous = alpha {first}")
    print((out / "eval" / "results.md").read_text())
    print(f"stage wall times (s): {timings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
