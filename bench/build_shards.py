"""Shard-build throughput, side by side in one run, in input audio-seconds per CPU-second.

    python bench/build_shards.py [--samples 2000] [--rounds 3] [--scale-samples 20000]
                                 [--out /tmp/bench_build]

On the same ``--samples`` inputs, in rounds (arms alternate so load on a shared machine hits all
alike; the median over rounds is printed):
(a) floor: a bare loop of soundfile decode + torchaudio resample + torchaudio log-mel
(b) our builder end to end (Ray tasks: decode, normalize, filters, fingerprint, dedup,
    log-mel, deterministic tar, index) with 1 Ray worker, after a 24-input warm-up build in
    the same Ray session (the worker's first-call costs, like the other arms' warm-up)
(c) naive baseline: serial librosa.load + librosa.feature.melspectrogram + np.save into tarfile
(d) lhotse 1.33 (the ``bench`` extra): ``Recording.from_file`` manifests, ``resample(16000)``,
    ``compute_and_store_features`` with a 64-bin ``Fbank``, ``to_shar`` tar shards
Then scaling: (b) with 1 and with 2 Ray workers on ``--scale-samples`` inputs (fixed costs --
Ray start, worker imports, planning, finalize -- do not dominate there), and a projection for
a LAION-Audio-630K-sized build (4,325 h) on N 64-core nodes from the measured per-core rate.

The input is the bundled corpora's audio, repeated until ``--samples`` files exist; each copy
gets a distinct small gain so exact-duplicate removal does not drop the repeats (near-duplicate
matching is switched off for the bench for the same reason; fingerprints are still computed).
Every arm's numerator is the same input audio duration (our builder trims silence, so its
kept audio is ~10 % less). CPU seconds: process CPU time of the loop for (a)/(c)/(d); for (b)
the CPU time summed over the shard tasks (as each task reports it) plus the driver's (the
scan, planning, the manifest, finalize: index, dedup, card).
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
import statistics
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # after PYTHONPATH: another checkout can be measured

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
    """torchaudio's own primitives, not our featurizer: the floor stays the same arm when
    ``dataprep.core.features.LogMel`` changes (it computes the same numbers in fewer passes)."""
    import torch
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, n_fft=400, win_length=400, hop_length=160, f_min=0.0, f_max=8000.0,
        n_mels=64, power=2.0, center=True, pad_mode="reflect", norm=None, mel_scale="htk",
    )  # fmt: skip
    audio_s = 0.0
    c0 = time.process_time()
    for p in paths:
        w, sr = sf.read(p, dtype="float32", always_2d=True)
        x = torch.from_numpy(w.mean(axis=1))
        if sr != 16000:
            x = torchaudio.functional.resample(x, sr, 16000)
        with torch.no_grad():
            torch.log(mel(x) + 1e-6).numpy().astype(np.float16)
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


def lhotse_loop(paths: list[Path], out: Path) -> tuple[float, float] | None:
    """lhotse's own recipe for the same job, in this process (``num_jobs=1``)."""
    try:
        from lhotse import CutSet, Fbank, FbankConfig, Recording, RecordingSet
    except ImportError:
        return None
    shutil.rmtree(out, ignore_errors=True)
    (out / "shar").mkdir(parents=True)
    c0 = time.process_time()
    recs = RecordingSet.from_recordings(Recording.from_file(p) for p in paths)
    cuts = CutSet.from_manifests(recordings=recs).resample(16000)
    cuts = cuts.compute_and_store_features(
        extractor=Fbank(FbankConfig(num_mel_bins=64)),
        storage_path=out / "feats",
        num_jobs=1,
        progress_bar=False,
    )
    cuts.to_shar(out / "shar", fields={"features": "numpy"}, shard_size=1000,
                 warn_unused_fields=False)  # fmt: skip
    return sum(c.duration for c in cuts), time.process_time() - c0


def ours(
    inputs: Path, out: Path, workers: int, warm: Path | None = None
) -> tuple[float, float, float, dict[str, float]]:
    """(kept audio-s, CPU-s, wall-s, CPU split) of one ``run_build``. CPU-s: the shard tasks'
    (as each reports it) + the driver's (the scan runs there). ``warm``: inputs of a small build run
    first in the same Ray session and not counted, so the measured build's workers have paid
    their first-call costs (lingua's models, torch's FFT plans), as the other arms' warm-up
    does; its CPU is reported as ``warmup``."""
    import ray
    from profile_build import bench_overrides

    import dataprep
    from dataprep.build.executor import run_build
    from dataprep.core.configfile import load_config

    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(None, bench_overrides(inputs))
    ray.init(
        num_cpus=workers,
        include_dashboard=False,
        logging_level="ERROR",
        # The workers import the dataprep this process imported (PYTHONPATH may name another
        # checkout, to measure it side by side).
        runtime_env={"env_vars": {"PYTHONPATH": str(Path(dataprep.__file__).parents[1]),
                                  "OMP_NUM_THREADS": "1"}},
    )  # fmt: skip
    split: dict[str, float] = {}
    try:
        if warm is not None:
            shutil.rmtree(out.with_name(out.name + "_warm"), ignore_errors=True)
            c0 = time.process_time()
            rec = run_build(
                load_config(None, bench_overrides(warm)), out.with_name(out.name + "_warm")
            )
            split["warmup"] = _build_cpu(rec) + time.process_time() - c0
        c0, t0 = time.process_time(), time.perf_counter()
        record = run_build(cfg, out)
        wall = time.perf_counter() - t0
        split["driver"] = time.process_time() - c0
    finally:
        ray.shutdown()
    split["tasks"] = sum(t["cpu_s"] for t in record["tasks"])
    # What did not run in parallel: the wall not covered by the shard tasks spread over the
    # workers (scan, worker start-up and imports, planning, finalize, scheduling gaps).
    split["serial_wall"] = wall - sum(t["wall_s"] for t in record["tasks"]) / workers
    audio_s = sum(t["audio_s"] for t in record["tasks"])
    return audio_s, split["tasks"] + split["driver"], wall, split


def _build_cpu(record: dict) -> float:
    return sum(t["cpu_s"] for t in record["tasks"])


def _ratio(name: str, value: float, target: str) -> None:
    print(f"ratio {name:<34} = {value:5.2f}x  (target {target})")


def scaling(work: Path, n: int) -> float:
    """2 Ray workers vs 1 on ``n`` inputs; returns the per-core rate of the 1-worker build."""
    inputs, total = make_inputs(work / "inputs_scale", n)
    print(f"scaling inputs: {n} files, {total / 3600:.2f} h of audio; "
          f"load average before: {os.getloadavg()[0]:.1f}")  # fmt: skip
    walls, rate = {}, 0.0
    for w in (1, 2):
        kept, cpu, wall, split = ours(inputs, work / f"ours_scale{w}", w)
        walls[w] = wall
        rate = total / cpu if w == 1 else rate
        print(f"(b) ours, {w} worker(s)            : {total / cpu:8.0f} audio-s/CPU-s  "
              f"{total / wall:6.0f} audio-s/wall-s  (driver {split['driver']:.1f} CPU-s, "
              f"wall {wall:.0f} s, of it not parallel {split['serial_wall']:.1f} s)")  # fmt: skip
    _ratio("2 workers / 1 worker (wall)", walls[1] / walls[2], ">= 1.7")
    return rate


def projection(rate: float, hours: float = 4325.0) -> None:
    """Wall time of a ``hours`` build on N 64-core nodes at ``rate`` audio-s per core-second,
    assuming the per-core rate holds (tasks are independent; the driver's share is measured)."""
    for nodes in (1, 4, 16, 64):
        wall_h = hours * 3600 / (rate * 64 * nodes) / 3600
        print(f"projection: {hours:.0f} h on {nodes:>2} x 64-core nodes at {rate:.0f} "
              f"audio-s/core-s: {wall_h * 60:7.1f} min")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale-samples", type=int, default=20000, help="0: skip the scaling run")
    ap.add_argument("--out", default="/tmp/bench_build")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    work = Path(args.out)
    inputs, total = make_inputs(work / "inputs", args.samples)
    warm, _ = make_inputs(work / "inputs_warm", 24)
    paths = sorted(inputs.glob("*.wav"))
    print(f"inputs: {len(paths)} files, {total / 3600:.2f} h of audio; "
          f"load average before: {os.getloadavg()[0]:.1f}; rounds: {args.rounds}")  # fmt: skip
    # Warm-up, not counted: first-call costs of each library (numba/librosa, lhotse, torch).
    floor_loop(paths[:5])
    naive_loop(paths[:5], work / "naive.tar")
    lhotse_loop(paths[:5], work / "lhotse")
    rates: dict[str, list[float]] = {k: [] for k in ("a", "b", "c", "d")}
    splits: list[dict[str, float]] = []
    for _ in range(args.rounds):
        rates["a"].append(total / floor_loop(paths)[1])
        rates["c"].append(total / naive_loop(paths, work / "naive.tar")[1])
        lh = lhotse_loop(paths, work / "lhotse")
        if lh is not None:
            rates["d"].append(total / lh[1])
        _, cpu, _, split = ours(inputs, work / "ours1", 1, warm)
        rates["b"].append(total / cpu)
        splits.append(split)
    med = {k: statistics.median(v) for k, v in rates.items() if v}
    print(f"(a) floor decode+resample+logmel : {med['a']:8.0f} audio-s/CPU-s")
    split = {k: statistics.median(s[k] for s in splits) for k in splits[0]}
    print(f"(b) ours, 1 worker               : {med['b']:8.0f} audio-s/CPU-s  (CPU-s: shard "
          f"tasks {split['tasks']:.2f}, driver {split['driver']:.2f}; "
          f"not counted: the 24-input warm-up build {split['warmup']:.2f})")  # fmt: skip
    print(f"(c) naive librosa + tarfile      : {med['c']:8.0f} audio-s/CPU-s")
    if "d" in med:
        print(f"(d) lhotse 1.33 Fbank + to_shar  : {med['d']:8.0f} audio-s/CPU-s")
    else:
        print("(d) lhotse: not installed (pip install -c constraints.txt -e '.[bench]')")
    _ratio("(b)/(c) ours / naive", med["b"] / med["c"], ">= 1.0, stretch 1.3")
    _ratio("(b)/(a) ours / floor", med["b"] / med["a"], ">= 0.8")
    if "d" in med:
        _ratio("(b)/(d) ours / lhotse", med["b"] / med["d"], ">= 1.3")
    rate = med["b"]
    if args.scale_samples:
        rate = scaling(work, args.scale_samples)
    projection(rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
