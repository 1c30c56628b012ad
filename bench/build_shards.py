"""Shard-build throughput, side by side in one run, in audio-seconds per CPU-second.

    python bench/build_shards.py [--samples 2000] [--out /tmp/bench_build]

(a) floor: a bare loop of soundfile decode + torchaudio resample + torchaudio log-mel
(b) our builder end to end (Ray tasks: decode, normalize, filters, fingerprint, dedup,
    log-mel, deterministic tar, index), with 1 and with 2 Ray workers
(c) naive baseline: serial librosa.load + librosa.feature.melspectrogram + np.save into tarfile

The input is the bundled corpora's audio, repeated until ``--samples`` files exist; each copy
gets a distinct small gain so exact-duplicate removal does not drop the repeats (near-duplicate
matching is switched off for the bench for the same reason; fingerprints are still computed).
CPU seconds: process CPU time of the loop for (a)/(c); for (b) the CPU time summed over the
shard tasks (as each task reports it) plus the driver's, so the per-core ratio is honest.
"""

from __future__ import annotations

import os

# Before numpy/torch load: librosa's mel matmul would otherwise start a BLAS thread per core, and
# every arm is meant to be measured single-threaded (Ray workers get OMP_NUM_THREADS=1 too).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import io
import json
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CORPORA = REPO / "tests" / "fixtures" / "corpora"
SOURCES = ["esc50_mini", "audiocaps_mini", "commonvoice_mini", "librispeech_mini", "cremad_mini"]


def make_inputs(root: Path, n: int) -> tuple[Path, float]:
    """Write ``n`` wav files (repeats of the bundled clips, distinct gains) + a NeMo manifest."""
    files = sorted(
        p
        for s in SOURCES
        for p in (CORPORA / s).rglob("*")
        if p.suffix in {".wav", ".flac", ".ogg", ".mp3"}
    )
    decoded = []
    for p in files:
        try:
            w, sr = sf.read(p, dtype="float32", always_2d=True)
        except Exception:
            continue
        decoded.append((p.stem, w, sr))
    root.mkdir(parents=True, exist_ok=True)
    rows, total = [], 0.0
    for i in range(n):
        stem, w, sr = decoded[i % len(decoded)]
        gain = 0.5 + 0.5 * ((i // len(decoded)) + 1) / (n // len(decoded) + 2)
        name = f"{i:05d}_{stem}.wav"
        sf.write(root / name, w * gain, sr, subtype="PCM_16")
        dur = len(w) / sr
        total += dur
        rows.append(
            {
                "audio_filepath": name,
                "text": f"clip {stem}",
                "duration": round(dur, 3),
                "lang": "en",
            }
        )
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, total


def floor_loop(paths: list[Path]) -> tuple[float, float]:
    import torch
    import torchaudio

    from dataprep.core.config import FeatureConfig
    from dataprep.core.features import LogMel

    lm = LogMel(FeatureConfig())
    audio_s = 0.0
    c0 = time.process_time()
    for p in paths:
        w, sr = sf.read(p, dtype="float32", always_2d=True)
        x = torch.from_numpy(w.mean(axis=1))
        if sr != 16000:
            x = torchaudio.functional.resample(x, sr, 16000)
        lm(x.numpy())
        audio_s += len(w) / sr
    return audio_s, time.process_time() - c0


def naive_loop(paths: list[Path], out: Path) -> tuple[float, float]:
    import librosa

    audio_s = 0.0
    c0 = time.process_time()
    with tarfile.open(out, "w") as tar:
        for p in paths:
            y, _ = librosa.load(p, sr=16000)
            mel = np.log(
                librosa.feature.melspectrogram(y=y, sr=16000, n_fft=400, hop_length=160, n_mels=64)
                + 1e-6
            )
            buf = io.BytesIO()
            np.save(buf, mel.astype(np.float16))
            ti = tarfile.TarInfo(p.stem + ".mel.npy")
            ti.size = buf.tell()
            buf.seek(0)
            tar.addfile(ti, buf)
            audio_s += len(y) / 16000
    return audio_s, time.process_time() - c0


def ours(inputs: Path, out: Path, workers: int) -> tuple[float, float, float]:
    import ray

    from dataprep.build.executor import run_build
    from dataprep.core.configfile import load_config

    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(
        None,
        [
            "build.corpora=[{name: bench, reader: nemo, "
            f"root: {inputs}, splits: [manifest.jsonl]}}]",
            "build.augment.templates=false",
            "build.dedup.near=false",
            "build.shards.target_mb=8",
            "build.filters.require_text=true",
            "build.splits.val_fraction=0.0",
        ],
    )
    ray.init(
        num_cpus=workers,
        include_dashboard=False,
        logging_level="ERROR",
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}},
    )
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        record = run_build(cfg, out)
        wall = time.perf_counter() - t0
        driver_cpu = time.process_time() - c0
    finally:
        ray.shutdown()
    audio_s = sum(t["audio_s"] for t in record["tasks"])
    task_cpu = sum(t["cpu_s"] for t in record["tasks"])
    return audio_s, task_cpu + driver_cpu, wall


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--out", default="/tmp/bench_build")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    work = Path(args.out)
    inputs, total = make_inputs(work / "inputs", args.samples)
    paths = sorted(inputs.glob("*.wav"))
    print(f"inputs: {len(paths)} files, {total / 3600:.2f} h of audio")
    a_s, a_cpu = floor_loop(paths)
    c_s, c_cpu = naive_loop(paths, work / "naive.tar")
    b1_s, b1_cpu, b1_wall = ours(inputs, work / "ours1", 1)
    b2_s, b2_cpu, b2_wall = ours(inputs, work / "ours2", 2)
    a, b, c = a_s / a_cpu, b1_s / b1_cpu, c_s / c_cpu
    print(f"(a) floor decode+resample+logmel : {a:8.0f} audio-s/CPU-s")
    print(
        f"(b) ours, 1 worker               : {b:8.0f} audio-s/CPU-s  "
        f"({b1_s / b1_wall:.0f} audio-s/wall-s)"
    )
    print(
        f"(b) ours, 2 workers              : {b2_s / b2_cpu:8.0f} audio-s/CPU-s  "
        f"({b2_s / b2_wall:.0f} audio-s/wall-s)"
    )
    print(f"(c) naive librosa + tarfile      : {c:8.0f} audio-s/CPU-s")
    print(f"ratio (b)/(c) = {b / c:.2f}  (target >= 5)")
    print(f"ratio (b)/(a) = {b / a:.2f}  (target >= 0.7 per core)")
    print(
        "scaling 2 workers / 1 worker (wall throughput) = "
        f"{(b2_s / b2_wall) / (b1_s / b1_wall):.2f}  (target >= 1.7)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
