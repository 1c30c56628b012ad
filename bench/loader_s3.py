"""Loader throughput from an S3 API on loopback vs local disk: same shards, same run.

    python bench/loader_s3.py [--samples 2000] [--shard-count 8] [--workers 2] [--repeat 3]

The shard set of ``bench/loader.py`` (real fixture clips under new keys) is written locally and
uploaded to a bucket of a ``moto`` S3 server started on 127.0.0.1 as its own process (as a real
endpoint is: in this process its Python threads would compete for the trainer's GIL) — real
HTTP, real s3fs, the production path of ``dataprep.core.storage``; then the full training loader
(``ShardLoader``: sha256 check against shards.json, shuffle, crop, tokenization, collation) reads
the local set and the bucket, interleaved, ``--workers`` DataLoader workers each. Printed:
samples/s of each (median of ``--repeat``) and remote/local (target >= 0.8), then the time to
the first batch and the ratio after it (steady state: per-epoch startup excluded). No cache: every
remote epoch fetches every shard. The server process is stopped by its PID at the end. On a
machine with few cores the server's CPU is taken from the loader's: the ratio is a lower bound.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from loader import make_set, ours, real_mels

from dataprep.core import storage
from dataprep.core.config import FeatureConfig
from dataprep.loader import iter_shard_texts
from model.tokenizer import Tokenizer, train_tokenizer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (the DataLoader workers)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _proc_cpu(pid: int) -> float:
    """CPU seconds of one running process (the S3 server), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--corpora", type=Path, default=REPO / "tests" / "fixtures" / "corpora")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--shard-count", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    import boto3

    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
    )  # fmt: skip
    try:
        for _ in range(100):  # the server is up when it accepts a connection
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        boto3.client("s3").create_bucket(Bucket="bench-shards")
        features = FeatureConfig()
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "shards"
            make_set(real_mels(args.corpora, features), root, args.samples, args.shard_count,
                     features)  # fmt: skip
            uri = "s3://bench-shards/set"
            for f in sorted(p for p in root.rglob("*") if p.is_file()):
                storage.upload(f, storage.join(uri, *f.relative_to(root).parts))
            mb = sum(p.stat().st_size for p in (root / "train").glob("*.tar")) / 1e6
            tok_path = Path(tmp) / "tok.model"
            train_tokenizer(iter_shard_texts(root / "train"), tok_path, vocab_size=1000)
            tok = Tokenizer(tok_path)
            local_t, remote_t, local_first, remote_first = [], [], [], []
            local_cpu, remote_cpu, server_cpu = [], [], []
            for _ in range(args.repeat):  # interleaved so load changes hit both sides alike
                t0, c0 = time.perf_counter(), _cpu()
                n_local = ours(root / "train", features, tok, args.workers, first=local_first)
                local_t.append(time.perf_counter() - t0)
                local_cpu.append(_cpu() - c0)
                t0, c0, s0 = time.perf_counter(), _cpu(), _proc_cpu(server.pid)
                n_remote = ours(f"{uri}/train", features, tok, args.workers, first=remote_first)
                remote_t.append(time.perf_counter() - t0)
                remote_cpu.append(_cpu() - c0)
                server_cpu.append(_proc_cpu(server.pid) - s0)
                assert n_local == n_remote == args.samples, (n_local, n_remote)
    finally:
        server.terminate()
        server.wait(timeout=30)
    local_sps = args.samples / statistics.median(local_t)
    remote_sps = args.samples / statistics.median(remote_t)
    print(f"set: {args.samples} samples, {args.shard_count} shards, {mb:.1f} MB; "
          f"{args.workers} workers; median of {args.repeat}")  # fmt: skip
    for name, sps, runs in (
        ("local disk ", local_sps, local_t),
        ("loopback S3", remote_sps, remote_t),
    ):
        print(f"{name}  {sps:8.0f} samples/s  (runs {', '.join(f'{t:.2f}s' for t in runs)})")
    print(f"S3 / local: {remote_sps / local_sps:.2f}x (target >= 0.8x)")
    # the server shares this machine's cores with the loader (a real object store does not)
    med = statistics.median
    print(f"CPU-s per epoch: loader local {med(local_cpu):.2f}, loader S3 {med(remote_cpu):.2f}, "
          f"the moto server {med(server_cpu):.2f} (of {os.cpu_count()} cores x "
          f"{med(remote_t):.2f} s)")  # fmt: skip
    # steady state: the epoch after its first batch (startup is paid once per epoch, and a
    # training epoch over a real set is hours long, not the seconds of this set)
    steady = [
        (args.samples - 32) / statistics.median(t - f for t, f in zip(ts, fs))  # 32: batch 1
        for ts, fs in ((local_t, local_first), (remote_t, remote_first))
    ]
    print(f"first batch after: local {statistics.median(local_first):.2f}s, "
          f"S3 {statistics.median(remote_first):.2f}s (median)")  # fmt: skip
    print(f"steady state (after the first batch): local {steady[0]:.0f}, S3 {steady[1]:.0f} "
          f"samples/s: {steady[1] / steady[0]:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
