"""Where one shard task's CPU goes: py-spy over the per-input processor, summed by stage.

    python bench/profile_build.py [--samples 600] [--out /tmp/bench_profile] [--rate 250]

Runs the shard task's own body (``dataprep.build.shard.build_shard``: ``SampleProcessor`` on
every input, then the deterministic tar and the part record) in one single-threaded process
under ``py-spy record`` on the bench inputs of ``bench/build_shards.py`` (the bundled clips
repeated with distinct gains), and prints, per stage, its share of the shard task's samples:
a sample counts for a stage when its stack passes through that stage's function (inclusive
time; stages nest, so shares do not sum to 100 %). Process start, imports and the corpus scan
are outside the shard task and not counted. Needs py-spy (the ``bench`` extra).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

# (stage, frame substrings: a stack sample counts for the stage if any frame contains one)
STAGES = [
    ("shard task total (build_shard)", ("build_shard (",)),
    ("  per-input processor (SampleProcessor.__call__)", ("__call__ (dataprep/process.py",)),
    ("    decode (soundfile / ffmpeg)", ("decode (dataprep/core/decode.py",)),
    ("    downmix + resample", ("resample (dataprep/core/waveform.py",)),
    ("    loudness (BS.1770)", ("loudness_lufs (",)),
    ("    trim/segment stats", ("hop_mean_square (", "ac_rms (")),
    ("    language ID", ("detect_language (",)),
    ("    text normalization", ("normalize_text (",)),
    ("    audio fingerprint", ("audio_fingerprint (", "mel_fingerprint (")),
    ("    pcm sha1", ("pcm_sha1 (",)),
    ("    dedup index", ("add (dataprep/dedup.py",)),
    ("    features (log-mel / preset)", ("(dataprep/core/features.py", "feature_presets")),
    ("    sample packing (meta)", ("canonical_meta (",)),
    ("  tar writing + sha256", ("write_tar_atomic (",)),
    ("  part record (json)", ("atomic_write_json (",)),
    ("setup: SampleProcessor()", ("__init__ (dataprep/process.py",)),
]


def child(inputs: Path, out: Path) -> None:
    """The profiled process: scan the bench corpus, then one shard task over every row."""
    import torch

    from dataprep.build.manifest import scan_corpus
    from dataprep.build.plan import ShardTask
    from dataprep.build.shard import build_shard
    from dataprep.core.configfile import load_config

    torch.set_num_threads(1)
    cfg = load_config(None, bench_overrides(inputs))
    rows, _ = scan_corpus(cfg.build.corpora[0])
    shutil.rmtree(out, ignore_errors=True)
    (out / "train").mkdir(parents=True)
    t0, c0 = time.perf_counter(), time.process_time()
    stats = build_shard(cfg, out, ShardTask("train", "shard-000000", 0, len(rows)), rows, None)
    print(
        f"child: {stats['samples']} samples, {stats['audio_s']:.0f} audio-s in "
        f"{time.process_time() - c0:.2f} CPU-s ({time.perf_counter() - t0:.2f} wall-s): "
        f"{stats['audio_s'] / stats['cpu_s']:.0f} audio-s per CPU-s (under the profiler)"
    )


def bench_overrides(inputs: Path) -> list[str]:
    """The shard build's bench config (``bench/build_shards.py`` uses the same one)."""
    return [
        f"build.corpora=[{{name: bench, reader: nemo, root: {inputs}, splits: [manifest.jsonl]}}]",
        "build.augment.templates=false",
        "build.dedup.near=false",
        "build.shards.target_mb=8",
        "build.filters.require_text=true",
        "build.splits.val_fraction=0.0",
    ]


def summarize(raw: Path) -> list[tuple[str, float]]:
    """Each stage's share of the shard task's samples (the first STAGES line)."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        for name, keys in STAGES:
            if stack and any(key in stack for key in keys):
                counts[name] += int(n)
    total = max(1, counts[STAGES[0][0]])
    return [(name, 100.0 * counts[name] / total) for name, _ in STAGES]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--out", default="/tmp/bench_profile")
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.out)
    if args.child:
        child(work / "inputs", work / "shards")
        return 0
    from build_shards import make_inputs

    inputs, total = make_inputs(work / "inputs", args.samples)
    print(f"inputs: {args.samples} files, {total:.0f} s of audio")
    raw = work / "pyspy.txt"
    pyspy = Path(sys.executable).with_name("py-spy")
    cmd = [str(pyspy), "record", "-r", str(args.rate), "-f", "raw", "-o", str(raw), "--"]
    cmd += [sys.executable, __file__, "--child", "--out", str(work)]
    subprocess.run(cmd, check=True)
    for name, share in summarize(raw):
        print(f"{name:<52} {share:5.1f} % of the shard task")
    return 0


if __name__ == "__main__":
    sys.exit(main())
