"""Loader throughput: dataprep.loader.ShardLoader vs raw reading of the same tars, same run.

    python bench/loader.py [--shards DIR] [--corpora tests/fixtures/corpora] [--repeat 3]

Raw = ``tarfile`` streaming + ``np.load`` of every ``mel.npy`` + ``json.loads`` of the meta, no
collation: the floor any reader pays. Ours = the full training path in one process
(``num_workers=0``): shard sha256 check against shards.json, split, shuffle buffer, validation,
crop to max_frames, caption choice, sentencepiece tokenization, collation into padded tensors.
Printed: samples/s of each, the ratio (target >= 0.8), the same path without the sha256 check
(``verify=False``) and the checked/unchecked ratio (the integrity check's cost), and the ratio
with 2 DataLoader workers (target >= 1.0x): over the whole epoch (forking and joining the
workers included) and from the first batch on; CPU microseconds per sample of each arm (the
workers' CPU included).
Without ``--shards`` a shard set is made from the real bundled audio (clips repeated under new
keys to ``--samples``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import resource
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dataprep.core.atomic import atomic_write_json
from dataprep.core.config import FeatureConfig
from dataprep.core.features import feature_fingerprint, fingerprint_fields, log_mel
from dataprep.core.shards import shard_name, shard_paths
from dataprep.core.tario import write_tar_atomic
from dataprep.loader import ShardLoader, iter_shard_texts
from model.config import TextEncoderConfig
from model.tokenizer import Tokenizer, make_tokenize, train_tokenizer


def real_mels(corpora: Path, features: FeatureConfig) -> list[tuple[str, np.ndarray]]:
    """(category, log-mel) of every ESC-50-style fixture clip, decoded with soundfile."""
    import soundfile as sf
    from scipy.signal import resample_poly

    esc = corpora / "esc50_mini"
    out = []
    with open(esc / "meta" / "esc50.csv", newline="") as f:
        for row in csv.DictReader(f):
            wave, sr = sf.read(
                str(esc / "audio" / row["filename"]), dtype="float32", always_2d=True
            )
            wave = wave.mean(1)
            if sr != features.sample_rate_hz:
                g = np.gcd(sr, features.sample_rate_hz)
                wave = resample_poly(wave, features.sample_rate_hz // g, sr // g).astype(np.float32)
            out.append((row["category"].replace("_", " "), log_mel(wave, features)))
    return out


def make_set(
    mels: list[tuple[str, np.ndarray]],
    out: Path,
    n_samples: int,
    n_shards: int,
    features: FeatureConfig,
    frames: int | None = None,
) -> None:
    """A shard set of ``n_samples`` under new keys; ``frames``: tile clips to this length
    (e.g. 1000 = 10 s, the usual training crop) instead of their own 3 s."""
    fp = feature_fingerprint(features)
    samples = []
    for i in range(n_samples):
        cat, mel = mels[i % len(mels)]
        if frames is not None:
            mel = np.concatenate(
                [mels[(i + j) % len(mels)][1] for j in range(-(-frames // mel.shape[1]) + 1)],
                axis=1,
            )[:, :frames]
        texts = [f"the sound of {cat}", f"a recording of {cat}", f"{cat} can be heard nearby"]
        meta = {
            "id": f"bench-{i:08d}",
            "corpus": "bench",
            "group": f"g{i}",
            "feature_fingerprint": fp,
            "duration": mel.shape[1] * features.hop_length / features.sample_rate_hz,
            "texts": [
                {
                    "text": t,
                    "lang": "en",
                    "kind": "original" if j == 0 else "template",
                    "provenance": {},
                }
                for j, t in enumerate(texts)
            ],
        }
        samples.append({"__key__": f"bench-{i:08d}", "mel.npy": mel, "json": meta, "txt": texts[0]})
    entries = [
        write_tar_atomic(out / "train" / shard_name(s), samples[s::n_shards])
        for s in range(n_shards)
    ]
    atomic_write_json(out / "train" / "shards.json", {"shards": entries})
    atomic_write_json(
        out / "build.json",
        {"feature_fingerprint": fp, "feature_fields": fingerprint_fields(features)},
    )


def raw_read(split_dir: Path) -> int:
    n = 0
    for path in shard_paths(split_dir):
        with tarfile.open(path, mode="r|") as tar:
            for ti in tar:
                f = tar.extractfile(ti)
                if f is None:
                    continue
                data = f.read()
                if ti.name.endswith(".mel.npy"):
                    np.load(io.BytesIO(data), allow_pickle=False)
                    n += 1
                elif ti.name.endswith(".json"):
                    json.loads(data)
    return n


def ours(
    split_dir: Path,
    features: FeatureConfig,
    tok: Tokenizer,
    workers: int,
    verify: bool = True,
    first: list[float] | None = None,
) -> int:
    """Samples of one epoch of the training loader; ``first`` (when given) gets the seconds
    from the call to the first batch (construction, worker start, first shard read)."""
    t0 = time.perf_counter()
    ld = ShardLoader(
        split_dir,
        features=features,
        max_frames=1024,
        batch_size=32,
        tokenize=make_tokenize(tok, TextEncoderConfig(max_len=64)),  # as the trainer
        num_workers=workers,
        drop_last=False,
        pad_multiple=16,
        verify=verify,
    )
    n = 0
    for b in ld.iter_epoch():
        if first is not None and n == 0:
            first.append(time.perf_counter() - t0)
        n += len(b["keys"])
    return n


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (DataLoader workers)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, *args) -> tuple[float, int, float]:
    """``(wall s, samples, CPU s of this process and the workers it reaped)``."""
    t0, c0 = time.perf_counter(), _cpu()
    n = fn(*args)
    return time.perf_counter() - t0, n, _cpu() - c0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shards", type=Path, help="an existing shard set root (default: make one)")
    ap.add_argument("--corpora", type=Path, default=REPO / "tests" / "fixtures" / "corpora")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--shard-count", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--frames", type=int, default=None, help="tile clips to this many frames")
    ap.add_argument(
        "--mels", type=Path, help="npz of precomputed mels (--save-mels) instead of --corpora"
    )
    ap.add_argument("--save-mels", type=Path, help="write the fixture mels to this npz and exit")
    ap.add_argument("--write-set", type=Path, help="only write the shard set to this directory")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    features = FeatureConfig()
    if args.mels:
        z = np.load(args.mels)
        mels = [(str(c), z[f"m{i}"]) for i, c in enumerate(z["categories"])]
    else:
        mels = real_mels(args.corpora, features)
    if args.save_mels:
        np.savez(
            args.save_mels,
            categories=np.array([c for c, _ in mels]),
            **{f"m{i}": m for i, (_, m) in enumerate(mels)},
        )
        return 0
    if args.write_set:
        make_set(mels, args.write_set, args.samples, args.shard_count, features, args.frames)
        print(f"wrote {args.samples} samples to {args.write_set}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = args.shards
        if root is None:
            root = Path(tmp) / "shards"
            make_set(mels, root, args.samples, args.shard_count, features, args.frames)
        split = root / "train"
        tok_path = Path(tmp) / "tok.model"
        train_tokenizer(iter_shard_texts(split), tok_path, vocab_size=1000)
        tok = Tokenizer(tok_path)
        raw_read(split)  # warm the page cache for both contenders
        arms: dict[str, list[tuple[float, int, float]]] = {
            "raw": [],
            "ours": [],
            "plain": [],
            "par": [],
        }
        firsts: list[float] = []  # 2 workers: seconds to the first batch (workers started)
        for _ in range(args.repeat):  # interleaved so load changes hit both sides alike
            arms["raw"].append(timed(raw_read, split))
            arms["ours"].append(timed(ours, split, features, tok, 0))
            arms["plain"].append(timed(ours, split, features, tok, 0, False))
            arms["par"].append(timed(ours, split, features, tok, 2, True, firsts))
        counts = {k: {r[1] for r in v} for k, v in arms.items()}
        assert len(set().union(*counts.values())) == 1, counts
    n = arms["raw"][0][1]
    sps = {k: n / statistics.median(r[0] for r in v) for k, v in arms.items()}
    cpu_us = {k: 1e6 * statistics.median(r[2] for r in v) / n for k, v in arms.items()}
    steady = (n - 32) / statistics.median(r[0] - f for r, f in zip(arms["par"], firsts))
    print(f"samples per epoch: {n} (median of {args.repeat} runs each)")
    print(f"raw tarfile+np.load : {sps['raw']:9.1f} samples/s  {cpu_us['raw']:6.0f} CPU-us/sample")
    print(
        f"ShardLoader, 0 workers: {sps['ours']:9.1f} samples/s  ratio "
        f"{sps['ours'] / sps['raw']:.2f}x (target >= 0.8x)  {cpu_us['ours']:6.0f} CPU-us/sample"
    )
    print(
        f"  without the sha256 check (verify=False): {sps['plain']:9.1f} samples/s  ratio "
        f"{sps['plain'] / sps['raw']:.2f}x; checked/unchecked {sps['ours'] / sps['plain']:.2f}x  "
        f"{cpu_us['plain']:6.0f} CPU-us/sample"
    )
    print(
        f"ShardLoader, 2 workers: {sps['par']:9.1f} samples/s  ratio "
        f"{sps['par'] / sps['raw']:.2f}x (target >= 1.0x)  "
        f"{cpu_us['par']:6.0f} CPU-us/sample (main + workers)"
    )
    print(
        f"  after the first batch (workers started): {steady:9.1f} samples/s  ratio "
        f"{steady / sps['raw']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
