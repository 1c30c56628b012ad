"""Benchmark: audio-seconds normalized per CPU-second, three ways, same files, same run.

(a) floor   — soundfile decode + downmix + torchaudio.functional.resample to 16 kHz, nothing else
(b) ours    — dataprep.audio.load_segments (decode, resample, stats, loudness, trim, segment)
              + dedup.pcm_sha1 + dedup.audio_fingerprint on every segment
(c) naive   — librosa.load(path, sr=16000) per file, librosa.effects.trim, peak normalize
(d) decode  — soundfile decode only (context: what no stage can avoid)
(e) stage   — (b) without pcm_sha1/fingerprint (context: what the dedup keys cost)

Files: every audio file of the shared fixture corpora except ``bad_inputs`` (all formats,
rates and channel layouts). Methods are interleaved round by round so load from other
processes hits all of them alike; CPU time is ``time.process_time`` (all threads). Torch runs
single-threaded by default (``--threads``): a data worker owns one core, and on a busy 2-core
machine multi-threaded small ops measured up to 15x slower.

    .venv/bin/python bench/normalize.py                 # prints ratios; --rounds 3 by default
    .venv/bin/python bench/normalize.py --root tests/fixtures/corpora --rounds 1
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

AUDIO_EXT = (".wav", ".flac", ".ogg", ".mp3", ".opus")
SR = 16000


def find_files(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXT and "bad_inputs" not in p.parts
    )


def make_methods() -> dict[str, Callable[[Path], float]]:
    import librosa
    import numpy as np
    import soundfile as sf
    import torch
    import torchaudio.functional as AF

    from dataprep.audio import load_segments
    from dataprep.core.config import AudioConfig
    from dataprep.core.sample import SampleRef
    from dataprep.dedup import audio_fingerprint, pcm_sha1

    cfg = AudioConfig()

    def floor(path: Path) -> float:
        x, sr = sf.read(path, dtype="float32", always_2d=True)
        mono = torch.from_numpy(
            np.ascontiguousarray(x[:, 0] if x.shape[1] == 1 else x.mean(axis=1))
        )
        y = AF.resample(mono, sr, SR) if sr != SR else mono
        return float(y.shape[0])

    def ours(path: Path) -> float:
        ref = SampleRef(corpus="bench", source_id=path.name, audio=str(path))
        n = 0
        for seg in load_segments(ref, cfg, SR):
            pcm_sha1(seg.wave)
            audio_fingerprint(seg.wave, SR)
            n += seg.wave.size
        return float(n)

    def ours_no_dedup(path: Path) -> float:
        ref = SampleRef(corpus="bench", source_id=path.name, audio=str(path))
        return float(sum(seg.wave.size for seg in load_segments(ref, cfg, SR)))

    def naive(path: Path) -> float:
        y, _ = librosa.load(path, sr=SR)
        y, _ = librosa.effects.trim(y)
        y = y / max(float(np.abs(y).max()), 1e-9)
        return float(y.size)

    def decode_only(path: Path) -> float:
        x, _ = sf.read(path, dtype="float32", always_2d=True)
        return float(x.shape[0])

    return {
        "a_floor": floor,
        "b_ours": ours,
        "c_naive": naive,
        "d_decode": decode_only,
        "e_stage": ours_no_dedup,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--root", type=Path, default=REPO.parent / "shared" / "corpora")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not args.root.is_dir():
        args.root = REPO / "tests" / "fixtures" / "corpora"
    import soundfile as sf
    import torch

    torch.set_num_threads(args.threads)
    files = find_files(args.root)
    if not files:
        print(f"no audio files under {args.root}", file=sys.stderr)
        return 2
    audio_s = sum(sf.info(p).duration for p in files)
    methods = make_methods()
    for fn in methods.values():  # warm-up: imports, kernels, first-call costs
        for p in files[:5]:
            fn(p)
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    names = list(methods)
    clock = time.process_time
    for r in range(args.rounds):
        spent = dict.fromkeys(names, 0.0)
        for i, p in enumerate(files):
            # Interleave per file, rotating the order: background load hits every method alike.
            k = (i + r) % len(names)
            for name in names[k:] + names[:k]:
                t0 = clock()
                methods[name](p)
                spent[name] += clock() - t0
        for name in names:
            cpu[name].append(spent[name])
    speed = {m: audio_s / statistics.median(v) for m, v in cpu.items()}
    print(
        f"files: {len(files)} under {args.root}, audio: {audio_s:.1f} s, "
        f"rounds: {args.rounds}, torch threads: {args.threads}"
    )
    for m in names:
        print(
            f"  {m:9s} {speed[m]:8.0f} audio-s per CPU-s  "
            f"(CPU s per round: {', '.join(f'{x:.2f}' for x in cpu[m])})"
        )
    print(
        "(b)/(c) ours vs naive librosa: "
        f"{speed['b_ours'] / speed['c_naive']:.2f}x   (target >= 2.5)"
    )
    print(
        "(b)/(a) ours vs decode+resample floor: "
        f"{speed['b_ours'] / speed['a_floor']:.2f}x   (target >= 0.8)"
    )
    print(f"(b)/(d) ours vs decode only: {speed['b_ours'] / speed['d_decode']:.2f}x")
    print(f"(e)/(a) stage without dedup keys vs floor: {speed['e_stage'] / speed['a_floor']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
