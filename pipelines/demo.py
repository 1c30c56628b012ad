"""The end-to-end demo behind `make demo`: every used-by command, in order, on the bundled corpora.

    python pipelines/demo.py --config configs/demo.yaml --out outputs/demo

1. python pipelines/build_shards.py      (embedded local Ray)
2. python pipelines/train_tokenizer.py   (sentencepiece on the shard texts; skipped when the
                                         text tower brings its own, e.g. the packaged MiniLM)
3. deepspeed --num_gpus 2 jobs/pretrain.py   (CPU/gloo here, ZeRO-2)
4. python jobs/evaluate.py               (trained vs random-init table)
5. python pipelines/quality_report.py    (HTML + JSON)
6. build_shards + quality_report of configs/demo_llm.yaml: a few clips through the LLM caption
   stage (the packaged SmolLM2 in-process through transformers; no server to compile), so the
   report shows accepted and rejected LLM captions with their reasons
Each stage is the real command a user runs, started as a subprocess; the demo times them and
prints where every artifact is.
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
# The LLM caption sample (a separate, small shard set, not trained on): SmolLM2-135M on 2 CPU
# cores writes ~16 tokens/s, so the stage runs on a few clips, not the corpus.
LLM_CONFIG = "configs/demo_llm.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(name: str, cmd: list[str], timings: dict[str, float], env: dict[str, str]) -> None:
    print(f"\n=== [{name}] {' '.join(cmd)}", flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env)
    timings[name] = round(time.perf_counter() - t, 1)
    if proc.returncode != 0:
        print(f"demo: stage {name!r} failed with exit code {proc.returncode}", file=sys.stderr)
        sys.exit(proc.returncode)
    print(f"=== [{name}] done in {timings[name]:.1f}s", flush=True)


def _llm_ready() -> tuple[bool, str]:
    """Whether the LLM sample's backend (in-process SmolLM2) can run here, and if not, why."""
    from dataprep.augment.llm_server import llm_available
    from model.config import load_config

    return llm_available(load_config(REPO / LLM_CONFIG).build.augment.llm)


def _llm_note(enabled: bool, why: str) -> str:
    if enabled:
        return (
            "LLM caption stage: on: a sample of AudioCaps, ESC-50 and CREMA-D clips through the "
            f"packaged SmolLM2 in-process, {LLM_CONFIG}; accepted and rejected LLM captions "
            "with their reasons are in the llm_report"
        )
    return f"LLM caption stage: off ({why}; `make install` sets it up), the rest runs as usual"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--tasks", default="configs/tasks/demo.yaml")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--nproc", type=int, default=2, help="deepspeed processes (CPU: gloo)")
    args = p.parse_args(argv)

    out = Path(args.out).resolve()
    shards, run, evald, report = out / "shards", out / "run", out / "eval", out / "report"
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    py = sys.executable
    ds = str(Path(py).parent / "deepspeed")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    llm, why = _llm_ready()
    print(_llm_note(llm, why), flush=True)
    _run(
        "build_shards",
        [py, "pipelines/build_shards.py", "--config", args.config, "--out", str(shards)],
        timings,
        env,
    )
    from model.config import load_config

    text_cfg = load_config(
        REPO / args.config if not Path(args.config).is_absolute() else args.config
    ).model.text
    if text_cfg.kind == "transformer":
        _run(
            "train_tokenizer",
            [
                py,
                "pipelines/train_tokenizer.py",
                "--shards",
                str(shards),
                "--out",
                str(shards / "tokenizer.model"),
                "--vocab-size",
                str(text_cfg.vocab_size),
                *(["--lang-tags"] if text_cfg.lang_tags else []),  # as jobs/pretrain.py would
            ],
            timings,
            env,
        )
    else:
        print(
            f"\n=== [train_tokenizer] skipped: text.kind={text_cfg.kind} brings its own tokenizer",
            flush=True,
        )
    _run(
        "pretrain",
        [
            ds,
            "--num_gpus",
            str(args.nproc),
            "--master_port",
            str(_free_port()),
            "jobs/pretrain.py",
            "--config",
            args.config,
            "--shards",
            str(shards),
            "--out",
            str(run),
        ],
        timings,
        env,
    )
    _run(
        "evaluate",
        [
            py,
            "jobs/evaluate.py",
            "--checkpoint",
            str(run / "final"),
            "--tasks",
            args.tasks,
            "--out",
            str(evald / "results.json"),
        ],
        timings,
        env,
    )
    _run(
        "quality_report",
        [py, "pipelines/quality_report.py", "--shards", str(shards), "--out", str(report)],
        timings,
        env,
    )
    if llm:
        llm_shards, llm_report = out / "llm_sample", out / "llm_report"
        _run(
            "llm_captions",
            [py, "pipelines/build_shards.py", "--config", LLM_CONFIG, "--out", str(llm_shards)],
            timings,
            env,
        )
        _run(
            "llm_report",
            [
                py,
                "pipelines/quality_report.py",
                "--shards",
                str(llm_shards),
                "--out",
                str(llm_report),
            ],
            timings,
            env,
        )
    timings["total"] = round(time.perf_counter() - t0, 1)

    artifacts = {
        "shards": str(shards),
        "checkpoint": str(run / "final"),
        "eval_table": str(evald / "results.md"),
        "eval_json": str(evald / "results.json"),
        "quality_report": str(report / "report.html"),
    }
    if llm:
        artifacts["llm_report"] = str(out / "llm_report" / "report.html")
    (out / "demo_summary.json").write_text(
        json.dumps({"artifacts": artifacts, "timings_s": timings}, indent=2)
    )
    table = evald / "results.md"
    if table.exists():
        print("\n" + table.read_text())
    print("\npolyclap demo finished. Artifacts:")
    for k, v in artifacts.items():
        print(f"  {k:15s} {v}")
    print(_llm_note(llm, why))
    print("Stage wall times (s): " + ", ".join(f"{k}={v}" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
