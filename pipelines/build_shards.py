"""Build WebDataset shards from the configured corpora on Ray.

Embedded local Ray (a laptop)::

    python pipelines/build_shards.py --config configs/demo.yaml [--out DIR] \\
        [build.shards.target_mb=16 ...]

On a cluster (or a local head started with `ray start --head`)::

    ray job submit --working-dir . -- python pipelines/build_shards.py --config configs/demo.yaml

Stages: scan (one Ray task per corpus: metadata + header durations, never decoding) -> plan
(deterministic assignment to splits and byte-balanced shards) -> execute (one Ray task per
shard: decode, normalize, filter, dedup/decontaminate, augment, log-mel, atomic tar) ->
finalize (cross-shard duplicates, index.parquet, rejects.parquet, shards.json, build.json).
Rerunning the same command resumes: finished shards are verified by sha256 and kept.

CLAP-score curation (``build.curation``): a scoring model (a polyclap export ``final/`` or a
transformers ``ClapModel`` directory) scores every (audio, text) pair of the curated splits in
scorer actors (the model loaded once per actor, on CPU or one GPU each) and drops samples whose
primary text scores below ``min_score`` or below the ``percentile``-th percentile of their
corpus: rejects.parquet rows with reason ``clap_score_low`` and the score; kept samples carry
``stats.clap_score``; ``<split>/scores.parquet`` holds every scored pair. For example::

    python pipelines/build_shards.py --config configs/demo.yaml --out DIR \\
        build.curation.model=outputs/demo/run/final build.curation.percentile=20
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from dataprep.build.plan import BuildError, check_inputs
from dataprep.core import storage
from dataprep.core.config import ConfigError, CurationConfig
from dataprep.core.configfile import config_reference
from model.config import (  # the whole file is validated, as every entry point does
    ExperimentConfig,
    load_config,
)
from model.scoring import checked_factory

log = logging.getLogger("polyclap.build")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    keys = "\n".join(
        f"  build.curation.{k} = {f.default!r}: {f.description}"
        for k, f in CurationConfig.model_fields.items()
    )
    reference = config_reference(ExperimentConfig, ("features", "build"))
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Every key the build reads (as overrides or in the YAML):\n{reference}\n\n"
        f"CLAP-score curation keys, what each does:\n{keys}",
    )
    p.add_argument("--config", required=True, help="experiment YAML (sections features/build/...)")
    p.add_argument(
        "--out", default=None, help="output directory (default: build.out from the config)"
    )
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for an embedded local Ray")
    p.add_argument("overrides", nargs="*", help="config overrides: section.key=value")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = load_config(args.config, args.overrides)
        # Reader names and options are typed per reader: a typo fails here, before Ray starts.
        out = check_inputs(cfg, args.out)
        factory = checked_factory(cfg.build.curation)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from dataprep.build.executor import build_on_ray

    t0 = time.perf_counter()
    try:
        record = build_on_ray(cfg, out, num_cpus=args.num_cpus, scorer_factory=factory)
    except (BuildError, storage.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    total = sum(c["samples"] for c in record["counts"].values())
    rej = sum(c["rejects"] for c in record["counts"].values())
    text_rej = sum(c.get("text_rejects", 0) for c in record["counts"].values())
    log.info(
        "built %d samples (%d inputs rejected, %d generated texts rejected; "
        "reasons in rejects.parquet) in %.1fs",
        total, rej, text_rej, time.perf_counter() - t0,
    )  # fmt: skip
    for split, c in sorted(record["counts"].items()):
        if "clap_score_cuts" in c:
            low = c["reject_reasons"].get("clap_score_low", 0)
            print(f"curation[{split}]: {low} samples below the CLAP-score cut (clap_score_low), "
                  f"percentile cuts {c['clap_score_cuts']}")  # fmt: skip
        print(
            f"shards[{split}]: {storage.join(out, split)} ({c['samples']} samples, "
            f"{c['rejects']} inputs rejected, {c.get('text_rejects', 0)} generated texts rejected)"
        )
    print(f"build record: {storage.join(out, 'build.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
