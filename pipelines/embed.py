"""Embed a shard set or a corpus into a parquet embedding index (a Ray job).

    python pipelines/embed.py --model outputs/demo/run/final --shards outputs/demo/shards \\
        [--split test ...] --out outputs/demo/index
    python pipelines/embed.py --model DIR --config configs/demo.yaml --corpus esc50 --out DIR

Shards: the samples' stored features (the shard set's feature fingerprint must be the model's;
else exit 2 naming both), one Ray task per shard. ``--shards`` and ``--model`` may be ``s3://``,
``gs://`` (``--model``: an export synced by ``train.sync_to``) or, for shards, ``http(s)://``:
a remote shard is fetched and checked against its ``shards.json`` sha256. Corpus: the
configured corpus's audio files through the inference path (``model.api``: decode, normalize,
no trim), one task per chunk.
The model is loaded once per Ray worker (an actor). Writes ``<out>/embeddings.parquet`` (one row
per sample key: ``key, corpus, split, source, text, embedding``), ``<out>/errors.parquet``
(inputs that could not be embedded, with the reason) and ``<out>/index.json`` (model path and
fingerprint, feature fingerprint, dimension, counts). ``jobs/search.py`` queries it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]  # Ray workers get it on their PYTHONPATH

log = logging.getLogger("polyclap.embed")
EMBEDDINGS = "embeddings.parquet"
ERRORS = "errors.parquet"
INDEX_JSON = "index.json"


class Worker:
    """One model per Ray worker process; embeds one shard or one chunk of a corpus per call."""

    def __init__(self, model: str, device: str | None, batch_size: int) -> None:
        import torch

        from model import CLAP

        torch.set_num_threads(1)
        self.m = CLAP.from_pretrained(model, device=device, batch_size=batch_size, progress=False)

    def shard(
        self, split: str, tar: str, sha256: str | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        from dataprep.core.sample import MEL, META, TEXT

        samples, bad = _read_shard(tar, sha256)
        if bad:
            return [], [bad]
        if not samples:
            return [], []
        emb = self.m.embed_features([s[MEL] for s in samples])
        rows = [
            {
                "key": s["__key__"],
                "corpus": s[META].get("corpus"),
                "split": split,
                "source": s[META].get("source_uri"),
                "text": s.get(TEXT) or "",
                "embedding": e.tolist(),
            }
            for s, e in zip(samples, emb)
        ]
        return rows, []

    def refs(self, refs: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        from dataprep.core.sample import sample_key

        emb, errors = self.m.embed_audio([r.audio for r in refs], return_errors=True)
        bad = {e.index: e for e in errors}
        rows = [
            {
                "key": sample_key(r.corpus, r.source_id),
                "corpus": r.corpus,
                "split": r.split,
                "source": r.audio,
                "text": r.text or ", ".join(r.labels),
                "embedding": e.tolist(),
            }
            for i, (r, e) in enumerate(zip(refs, emb))
            if i not in bad
        ]
        return rows, [{"source": e.name, "reason": e.reason, "detail": e.detail} for e in errors]


def _read_shard(tar: str, sha256: str | None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """A shard's samples; a remote one is fetched once and checked against its shards.json
    sha256 (a mismatch is an error row, not a crash: the other shards complete)."""
    import io

    from dataprep.core import storage
    from dataprep.core.tario import decode_members, iter_shard, iter_tar_range

    if not storage.is_remote(tar):
        return list(iter_shard(tar)), {}
    data, digest = storage.fetch(tar)
    if sha256 and digest != sha256:
        return [], {"source": tar, "reason": "corrupt_shard", "detail": "sha256 differs from "
                    "shards.json (corrupt or modified)"}  # fmt: skip
    return [decode_members(k, m) for _, k, m in iter_tar_range(io.BytesIO(data))], {}


def where(loc: str) -> str:
    """A local path made absolute, a URI as given (the index records where its input was)."""
    from dataprep.core import storage

    return loc if storage.is_remote(loc) else str(Path(loc).resolve())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="polyclap export (final/) or ClapModel dir")
    p.add_argument(
        "--shards", default=None, help="shard set root (train/ val/ test/): a folder or a URI"
    )
    p.add_argument("--split", action="append", default=None, help="splits to embed (default all)")
    p.add_argument("--config", default=None, help="experiment YAML naming the corpus (--corpus)")
    p.add_argument("--corpus", default=None, help="a corpus of the config's build.corpora")
    p.add_argument("--out", required=True, help="index directory")
    p.add_argument("--chunk", type=int, default=64, help="corpus files per task")
    p.add_argument("--workers", type=int, default=2, help="model actors")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None)
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for an embedded local Ray")
    return p.parse_args(argv)


def _shard_jobs(args: argparse.Namespace, features: Any) -> list[tuple[str, tuple[Any, ...]]]:

    from dataprep.core import storage
    from dataprep.core.features import check_fingerprint
    from dataprep.core.sample import SPLITS
    from dataprep.core.shards import BUILD_JSON, SHARDS_JSON, shard_paths
    from dataprep.loader.shardset import ShardSet

    root = storage.location(args.shards)
    build = storage.join(root, BUILD_JSON)
    if not storage.exists(build):
        raise ValueError(f"{root}: no {BUILD_JSON} (not a shard set root)")
    record = storage.read_json(build)
    check_fingerprint(
        features,
        record.get("feature_fingerprint"),
        where=str(build),
        fields=record.get("feature_fields"),
    )
    if not storage.is_remote(root):
        splits = args.split or [s for s in SPLITS if (root / s).is_dir()]
        jobs = [("shard", (s, str(t))) for s in splits for t in shard_paths(root / s)]
    else:  # the listing is checked against shards.json up front, as the training loader does
        splits = args.split or [
            s for s in SPLITS if storage.exists(storage.join(root, s, SHARDS_JSON))
        ]
        sets = {s: ShardSet.open(storage.join(root, s)) for s in splits}
        jobs = [
            ("shard", (s, str(ss.path(n)), ss.record(n).sha256))
            for s, ss in sets.items()
            for n, _ in ss.shards
        ]
    if not jobs:
        raise ValueError(f"{root}: no shards in splits {splits}")
    return jobs


def _corpus_jobs(args: argparse.Namespace) -> tuple[list[tuple[str, tuple[Any, ...]]], list]:
    from dataprep.core.sample import Reject
    from dataprep.corpora import read_corpus
    from model.config import load_config

    cfg = load_config(args.config)
    corpus = next((c for c in cfg.build.corpora if c.name == args.corpus), None)
    if corpus is None:
        raise ValueError(
            f"{args.config}: no corpus {args.corpus!r} in build.corpora "
            f"({[c.name for c in cfg.build.corpora]})"
        )
    listing = list(read_corpus(corpus))
    refs = [r for r in listing if not isinstance(r, Reject)]
    rejects = [
        {"source": r.source, "reason": r.reason, "detail": r.detail}
        for r in listing
        if isinstance(r, Reject)
    ]
    return [("refs", (refs[i : i + args.chunk],)) for i in range(0, len(refs), args.chunk)], rejects


def write_index(
    out: Path, rows: list[dict[str, Any]], errors: list[dict[str, str]], info: dict[str, Any]
) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from dataprep.core.atomic import atomic_write_bytes, atomic_write_json

    rows = sorted(rows, key=lambda r: r["key"])
    dim = info["embed_dim"]
    table = pa.table(
        {
            **{
                c: pa.array([r[c] for r in rows], pa.string())
                for c in ("key", "corpus", "split", "source", "text")
            },
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array([x for r in rows for x in r["embedding"]], pa.float32()), dim
            ),
        }
    )
    err = pa.table(
        {c: pa.array([e[c] for e in errors], pa.string()) for c in ("source", "reason", "detail")}
    )
    for name, t in ((EMBEDDINGS, table), (ERRORS, err)):
        buf = io.BytesIO()
        pq.write_table(t, buf)
        atomic_write_bytes(out / name, buf.getvalue())
    atomic_write_json(out / INDEX_JSON, {**info, "rows": len(rows), "errors": len(errors)})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from dataprep.core.features import feature_fingerprint
    from model import CLAP
    from model.inference import USER_ERRORS, one_line

    if (args.shards is None) == (args.corpus is None) or (args.corpus and not args.config):
        print("embed: give --shards DIR, or --config FILE --corpus NAME", file=sys.stderr)
        return 2
    try:
        m = CLAP.from_pretrained(args.model, device="cpu", progress=False)
        jobs, errors = (
            (_shard_jobs(args, m.pre.features), []) if args.shards else _corpus_jobs(args)
        )
    except USER_ERRORS as err:  # ModelDirError, HFLoadError, FingerprintMismatch, ...: one line
        print(f"embed: {one_line(err)}", file=sys.stderr)
        return 2
    info = {
        "model": where(args.model),
        "model_kind": m.kind,
        "model_fingerprint": m.fingerprint(),
        "embed_dim": m.embed_dim,
        "feature_fingerprint": feature_fingerprint(m.pre.features),
        "source": where(args.shards)
        if args.shards
        else f"{Path(args.config).resolve()}#{args.corpus}",
    }
    del m

    import ray
    from ray.util import ActorPool
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    runtime_env = {
        "env_vars": {
            "PYTHONPATH": os.pathsep.join(
                x for x in (str(REPO), os.environ.get("PYTHONPATH", "")) if x
            )
        }
    }
    init_kwargs: dict[str, Any] = {"runtime_env": runtime_env, "logging_level": logging.WARNING}
    if not os.environ.get("RAY_ADDRESS"):  # `ray job submit` sets it: join the cluster
        init_kwargs.update(include_dashboard=False, num_cpus=args.num_cpus)
    ray.init(**init_kwargs)
    rows: list[dict[str, Any]] = []
    try:
        actor = ray.remote(num_cpus=1)(Worker)
        pool = ActorPool(
            [
                actor.remote(args.model, args.device, args.batch_size)
                for _ in range(max(1, min(args.workers, len(jobs))))
            ]
        )
        results = pool.map_unordered(lambda a, job: getattr(a, job[0]).remote(*job[1]), jobs)
        for got, bad in tqdm(results, total=len(jobs), desc="embed", unit="task", disable=None):
            rows.extend(got)
            errors.extend(bad)
    finally:
        ray.shutdown()
    out = Path(args.out)
    write_index(out, rows, errors, info)
    log.info(
        "embedded %d rows (%d errors) in %.1fs", len(rows), len(errors), time.perf_counter() - t0
    )
    print(f"index: {out / EMBEDDINGS} ({len(rows)} rows, {len(errors)} errors in {out / ERRORS})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
