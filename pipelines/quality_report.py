"""Data-quality report over a shard set: self-contained HTML (embedded PNG plots) + JSON.

    python pipelines/quality_report.py --shards outputs/demo/shards --out outputs/demo/report
    ray job submit --working-dir . -- python pipelines/quality_report.py --shards DIR --out DIR

One Ray task per shard computes mergeable partial statistics where the shard lies; the driver
merges them in shard order and adds the sections read from rejects.parquet, shards.json and
build.json. Sections: per corpus/language/split samples, hours, speakers and durations; audio
loudness, level, SNR estimate, clipping and silence; text length, characters per second, language-ID
agreement, vocabulary, caption diversity (distinct-n), augmented text shares, LLM acceptance;
duplicates and eval overlap; reject reasons with examples; shard balance; outlier keys.
Writes <out>/report.json (every number) and <out>/report.html; a rerun gives identical files.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger("polyclap.report")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--shards",
        required=True,
        help="shard set root (holds <split>/shards.json, build.json): a folder or an s3://, "
        "gs://, http(s):// URI",
    )
    p.add_argument("--out", required=True, help="output directory for report.html and report.json")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for an embedded local Ray")
    p.add_argument(
        "--config",
        default=None,
        help="experiment config: its loader.sampling gives the expected share of training draws",
    )
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    from dataprep.core.atomic import atomic_write_bytes, atomic_write_json
    from dataprep.core.config import ConfigError
    from dataprep.core.storage import StorageError
    from dataprep.report.collect import ReportError, assemble, shard_jobs, summarize_shard
    from dataprep.report.render import render_html
    from dataprep.report.stats import Partial
    from model.config import load_config  # the whole file is validated, as every entry point does

    try:
        jobs = shard_jobs(args.shards)
        sampling = load_config(args.config).loader.sampling if args.config else None
    except (ReportError, ConfigError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import ray
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    init_kwargs: dict = {"logging_level": logging.WARNING}
    if not os.environ.get("RAY_ADDRESS"):  # `ray job submit` sets it: join the cluster
        init_kwargs.update(include_dashboard=False, num_cpus=args.num_cpus)
    ray.init(**init_kwargs)
    try:
        task = ray.remote(num_cpus=1, max_retries=2)(summarize_shard)
        # each split's excluded keys go to the object store once: as a plain argument the
        # driver serialized the whole list again for every shard task (shards x duplicates)
        excluded: dict = {}
        for split, _, exclude in jobs:
            if split not in excluded:
                excluded[split] = ray.put(exclude)
        refs = [task.remote(split, tar, excluded[split]) for split, tar, _ in jobs]
        merged = Partial()
        problems: list[str] = []
        # merge in shard order: the result does not depend on completion order; the bar shows
        # on a terminal only (disable=None), the log line below is the record
        for ref in tqdm(refs, desc="report: shards", unit="shard", disable=None):
            part, probs = ray.get(ref)
            merged.merge(part)
            problems.extend(probs)
    finally:
        ray.shutdown()
    log.info(
        "summarized %d shards (%d samples) in %.1fs",
        len(jobs),
        merged.samples,
        time.perf_counter() - t0,
    )

    report = assemble(args.shards, merged, problems, sampling)
    out = Path(args.out)
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.html", render_html(report).encode())
    for prob in problems:
        print(f"warning: {prob}", file=sys.stderr)
    print(f"report: {out / 'report.html'}")
    print(f"numbers: {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
