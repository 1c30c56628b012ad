"""Scale by simulation: the driver's bookkeeping at internet scale, metadata only (issue 20).

    python bench/scale_sim.py --sizes 100000 1000000 [--per-shard 100] [--stages build,loader]

Per size N (inputs; N / per-shard shards) one fresh subprocess runs the production functions on
generated metadata, no audio: **scan** (``manifest.scan_corpus`` over generated NeMo manifests
with durations, ``check_exists: false``), **plan** (``plan_shards``, ``check_or_write_plan``,
``write_manifest``, as ``run_build``), **resume** (``executor.todo_shards``: every shard's tar
and part record checked, as a rerun does), **finalize** (``finalize_build``: cross-shard exact +
near dedup over every part, ``index.parquet``/``rejects.parquet``/``shards.json`` per split);
then the loader's **epoch plan** (``epoch_segments`` of one worker of a 64-GPU x 8-worker job)
and **weighted plan** (``open_plan`` over ``index.parquet`` + ``weighted_segments`` of one
worker), and the report's **merge** (``Partial.merge`` of one Partial per shard, in shard order,
as ``pipelines/quality_report.py``; the partials are made by ``Partial.add`` on synthetic
samples outside the timed merge, as the shard tasks would). Tars are tiny stand-ins (the
resume check hashes each; a real resume hashes every byte of every done shard: linear in
bytes, ~1.3 GB/s per core here). Printed and written (``--json``): wall seconds and peak RSS
growth over the stage start (sampled every 5 ms from /proc, after ``malloc_trim``) and the RSS
left after it, per stage and size; wall and CPU seconds (the machine is shared: CPU-s is the
steadier number).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LANGS = ("en", "de", "fr", "es", "zh", "hi", "ar", "ru")
PAGE = os.sysconf("SC_PAGE_SIZE")
_LIBC = ctypes.CDLL("libc.so.6")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Stages:
    """Wall time and peak RSS (a 5 ms sampler thread) of each named stage."""

    def __init__(self) -> None:
        self.out: dict[str, dict[str, float]] = {}
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, rss())

    @contextmanager
    def stage(self, name: str):
        gc.collect()
        _LIBC.malloc_trim(0)  # freed heap back to the OS: the stage's growth is its own
        base = self._peak = rss()
        t, cpu = time.perf_counter(), time.process_time()
        yield
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        self._peak = max(self._peak, rss())
        peak = (self._peak - base) / 2**20
        held = rss() / 2**20
        self.out[name] = {
            "s": round(wall, 3), "cpu_s": round(cpu, 3), "peak_mb": round(peak, 1),
            "rss_after_mb": round(held, 1),
        }  # fmt: skip
        print(
            f"  {name:11s} {wall:8.2f} s  {cpu:8.2f} CPU-s  peak +{peak:8.1f} MB  "
            f"RSS after {held:8.1f} MB", flush=True,
        )  # fmt: skip

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)


def write_manifests(root: Path, n: int, per_file: int = 1_000_000) -> None:
    """NeMo JSONL manifests of ``n`` rows (durations given: the scan never opens audio)."""
    root.mkdir(parents=True)
    for f0 in range(0, n, per_file):
        with open(root / f"train_part{f0 // per_file:04d}.jsonl", "w") as f:
            for i in range(f0, min(n, f0 + per_file)):
                row = {
                    "audio_filepath": f"audio/{i // 1000:05d}/{i:09d}.flac",
                    "text": f"utterance number {i} of the simulated corpus",
                    "duration": 2.0 + (i * 7919 % 1300) / 100.0,
                    "lang": LANGS[i * 31 % len(LANGS)],
                    "speaker": f"spk{i * 13 % 50021}",
                }
                f.write(json.dumps(row) + "\n")


def config(corpus_root: Path, per_shard: int) -> Any:
    from dataprep.core.config import DataConfig

    return DataConfig.model_validate(
        {
            "build": {
                "corpora": [
                    {
                        "name": "sim",
                        "reader": "nemo",
                        "root": str(corpus_root),
                        "options": {"check_exists": False},
                    },
                ],  # fmt: skip
                "shards": {"max_samples_per_shard": per_shard, "target_mb": 1e6},
                "splits": {"val_fraction": 0.01, "test_fraction": 0.01},
            }
        }
    )


def fake_shard_outputs(out: Path, plan: Any) -> None:
    """A stand-in tar and the part record a shard task writes, for every shard of the plan."""
    from dataprep.build.finalize import part_path
    from dataprep.core.atomic import atomic_write_json

    dirs: set[Path] = set()
    for t in plan.shards:
        tar = out / t.split / t.name
        if tar.parent not in dirs:
            part_path(out, t.split, t.name).parent.mkdir(parents=True, exist_ok=True)
            dirs.add(tar.parent)
        rows = plan.rows_of(t)
        data = ("\n".join(r["source_id"] for r in rows)).encode()
        tar.write_bytes(data)
        keys = [f"sim-{hashlib.sha1(r['source_id'].encode()).hexdigest()[:16]}" for r in rows]
        pcm = [_pcm(r["source_id"]) for r in rows]
        index = [
            {
                "key": k,
                "shard": t.name,
                "split": t.split,
                "corpus": "sim",
                "lang": r["lang"],
                "duration": r["est_duration_s"],
                "text": r["text"],
                "n_texts": 1,
                "labels": "[]",
                "speaker": r["speaker"],
                "group": r["speaker"],
                "audio_sha1": p,
                "frames": int(r["est_duration_s"] * 100),
            }  # fmt: skip
            for k, r, p in zip(keys, rows, pcm)
        ]
        part = {
            "entry": {
                "name": t.name,
                "samples": len(rows),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            },  # fmt: skip
            "index": sorted(index, key=lambda x: x["key"]),
            "rejects": [],
            "fingerprints": sorted(
                ({"key": k, "pcm": p, "fp": ""} for k, p in zip(keys, pcm)),
                key=lambda x: x["key"],
            ),
            "stats": {"audio_s": 1.0, "wall_s": 1.0, "cpu_s": 1.0, "node_id": "", "host": ""},
        }
        atomic_write_json(part_path(out, t.split, t.name), part)


def _pcm(source_id: str) -> str:
    """The audio sha1 of input ``i``: every 200th input repeats the one before it (exact
    duplicates, mostly across shards after the planner's interleave)."""
    i = int(source_id.rsplit("/", 1)[1].split(".")[0])
    return hashlib.sha1(str(i - 1 if i % 200 == 199 else i).encode()).hexdigest()


def build_stages(st: Stages, tmp: Path, n: int, per_shard: int) -> dict[str, Any]:
    from dataprep.build import manifest
    from dataprep.build.executor import todo_shards
    from dataprep.build.finalize import finalize_build, remove_leftovers
    from dataprep.build.plan import check_or_write_plan, plan_shards

    corpus = tmp / "corpus"
    write_manifests(corpus, n)
    cfg = config(corpus, per_shard)
    work = tmp / "out"
    with st.stage("scan"):
        rows, rejects = manifest.scan_corpus(cfg.build.corpora[0])
    with st.stage("plan"):
        plan = plan_shards(rows, cfg)
        del rows
        work.mkdir(parents=True, exist_ok=True)
        check_or_write_plan(work, cfg, plan)
        remove_leftovers(work)
        manifest.write_manifest(work, plan.rows)
    fake_shard_outputs(work, plan)
    with st.stage("resume"):
        todo = todo_shards(work, work, plan)
    assert not todo, f"{len(todo)} shards not done"
    with st.stage("finalize"):
        counts, _ = finalize_build(work, plan, rejects, cfg.build.dedup)
    return {"shards": len(plan.shards), "counts": counts}


def loader_stages(st: Stages, tmp: Path) -> None:
    from dataprep.core.config import SamplingConfig
    from dataprep.loader.sampling import open_plan, weighted_segments
    from dataprep.loader.shardset import ShardSet, epoch_segments

    shard_set = ShardSet.open(tmp / "out" / "train")
    split = {"epoch": 3, "rank": 17, "world_size": 64, "worker": 5, "num_workers": 8}
    with st.stage("epoch"):
        segs = epoch_segments(shard_set.shards, seed=0, shuffle=True, **split)
    assert segs
    with st.stage("weighted"):
        plan = open_plan(shard_set, SamplingConfig(by="lang", alpha=0.3), seed=0)
        wsegs = weighted_segments(plan, shard_set.shards, **split)
    assert wsegs


def report_stages(st: Stages, tmp: Path, n: int, per_shard: int) -> None:
    """The report driver: its job list over the built set, then the merge of one Partial per
    shard (each deserialized as ``ray.get`` would hand it over, then merged in shard order)."""
    import pickle

    import numpy as np

    from dataprep.report.collect import shard_jobs
    from dataprep.report.stats import Partial

    with st.stage("report_jobs"):
        jobs = shard_jobs(tmp / "out")
    # what the tasks' arguments carry: each job names its split's excluded keys
    st.out["report_jobs"]["exclude_keys_in_args"] = sum(len(ex) for _, _, ex in jobs)
    mel = np.linspace(-5.0, 0.0, 8, dtype=np.float16).reshape(2, 4)
    template = Partial()
    for i in range(per_shard):  # one shard's statistics by the shard tasks' own Partial.add
        meta = {
            "corpus": "sim", "lang": LANGS[i % len(LANGS)], "duration": 2.0 + i % 13,
            "speaker": f"spk{i}", "audio_sha1": f"{i:040x}",
            "stats": {"lufs": -23.0, "dbfs": -20.0, "clip_ratio": 0.0, "silence_ratio": 0.1},
            "texts": [{"text": f"utterance number {i}", "kind": "original"}],
        }  # fmt: skip
        template.add(
            {"__key__": f"sim-{i:016x}", "json": meta, "mel.npy": mel, "txt": "x"}, "train"
        )
    blob = pickle.dumps(template)
    merged, merge_s = Partial(), 0.0
    with st.stage("report"):  # wall includes making the partials; merge_s is the merge alone
        for s in range(-(-n // per_shard)):
            part = pickle.loads(blob)
            ids = range(s * per_shard, min(n, (s + 1) * per_shard))
            # what differs per shard and grows in the driver: audio hashes (every 2nd input
            # repeats one: duplicate groups) and speakers
            part.audio_sha1 = {f"{i // 2 * 2:040x}": [f"sim-{i:016x}"] for i in ids}
            for g in (*part.by_corpus.values(), *part.by_lang.values()):
                g.speakers = {f"spk{i * 13 % 50021}" for i in ids}
            t = time.perf_counter()
            merged.merge(part)
            merge_s += time.perf_counter() - t
    st.out["report"]["merge_s"] = round(merge_s, 3)
    print(f"  {'merge only':11s} {merge_s:8.2f} s", flush=True)


def one(n: int, per_shard: int, stages: list[str]) -> dict[str, Any]:
    # imported up front: a stage's numbers are its work, not a first import
    import dataprep.build.executor  # noqa: F401
    import dataprep.build.finalize  # noqa: F401
    import dataprep.loader.sampling  # noqa: F401
    import dataprep.report.collect  # noqa: F401

    st = Stages()
    info: dict[str, Any] = {"inputs": n}
    try:
        with tempfile.TemporaryDirectory(prefix="scale_sim_") as d:
            tmp = Path(d)
            if stages:
                info.update(build_stages(st, tmp, n, per_shard))
            if "loader" in stages:
                loader_stages(st, tmp)
            if "report" in stages:
                report_stages(st, tmp, n, per_shard)
    finally:
        st.close()
    import resource

    info["maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    info["stages"] = st.out
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--per-shard", type=int, default=100, help="inputs per shard (10M -> 100k)")
    ap.add_argument("--stages", default="build,loader,report")
    ap.add_argument("--json", type=Path, help="write every size's numbers here")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the per-size subprocess
    args = ap.parse_args()
    stages = args.stages.split(",")
    if args.one:
        print(json.dumps(one(args.one, args.per_shard, stages)))
        return 0
    results = []
    for n in args.sizes:
        print(f"== {n} inputs, {-(-n // args.per_shard)} shards", flush=True)
        cmd = [sys.executable, __file__, "--one", str(n), "--per-shard", str(args.per_shard),
               "--stages", args.stages]  # fmt: skip
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        lines = proc.stdout.rstrip().splitlines()
        print("\n".join(lines[:-1]))
        if proc.returncode != 0:
            print(f"size {n} failed (rc {proc.returncode})")
            break
        results.append(json.loads(lines[-1]))
        print(f"  peak RSS of the process {results[-1]['maxrss_mb']} MB", flush=True)
    if len(results) > 1:
        a, b = results[0], results[-1]
        f = b["inputs"] / a["inputs"]
        print(f"growth {a['inputs']} -> {b['inputs']} inputs (x{f:g}): CPU time, peak memory")
        for name, x in b["stages"].items():
            t0, m0 = a["stages"][name]["cpu_s"], a["stages"][name]["peak_mb"]
            tr = f"x{x['cpu_s'] / t0:6.1f}" if t0 > 0.01 else "   -   "
            mr = f"x{x['peak_mb'] / m0:6.1f}" if m0 >= 1 else "   -   "
            print(f"  {name:11s} {tr}  {mr}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
