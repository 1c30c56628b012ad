"""Verify a shard set: every tar against shards.json (size, sha256), every member decoded,
index.parquet consistent with the tars. With --repair, rebuild only broken or missing shards.

    python pipelines/verify_shards.py OUT_DIR
    python pipelines/verify_shards.py OUT_DIR --repair --config configs/demo.yaml
    python pipelines/verify_shards.py s3://bucket/set [--repair --config ...]   # a remote set

Exit status 0 when sound (or repaired), 1 when problems remain.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dataprep.core import shards, storage
from dataprep.core.sample import SPLITS


def report(out: Path | str, decode: bool = True) -> tuple[list[str], dict[str, list[str]], str]:
    """``(problems, broken shard names per split, count summary)`` of the shard set ``out``."""
    checks = shards.verify_set(out, decode)
    if not checks:
        return [f"{out} holds no split directories ({', '.join(SPLITS)})"], {}, ""
    problems = [f"{c.split}/{p}" for c in checks for p in c.problems]
    broken = {c.split: c.broken for c in checks if c.broken}
    return problems, broken, shards.describe_counts(checks)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("out", help="shard set root (holds train/, val/, build.json)")
    p.add_argument(
        "--repair", action="store_true", help="rebuild broken/missing shards (needs --config)"
    )
    p.add_argument("--config", help="the config the set was built with (for --repair)")
    p.add_argument(
        "overrides", nargs="*", help="config overrides used for the build: section.key=value"
    )
    # intermixed: overrides may follow --repair --config FILE, as the usage line shows
    args = p.parse_intermixed_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    out = storage.location(args.out)  # a local folder or an s3:// gs:// http(s):// URI
    try:
        problems, broken, counts = report(out)
    except storage.StorageError as e:  # unreachable endpoint, no credentials
        print(f"error: {e}", file=sys.stderr)
        return 2
    for prob in problems:
        print(f"problem: {prob}")
    if not problems:
        print(f"ok: {out} is sound: {counts}")
        return 0
    if not args.repair:
        print(
            f"{len(problems)} problem(s); rerun with --repair --config FILE to rebuild the "
            "broken shards"
        )
        return 1
    if not args.config:
        print("error: --repair needs --config (the config the set was built with)", file=sys.stderr)
        return 2
    return repair(out, broken, args.config, args.overrides)


def repair(out: Path | str, broken: dict[str, list[str]], config: str, overrides: list[str]) -> int:
    """Rebuild the broken shards with the library's build (a resumed build redoes exactly the
    shards whose part record is gone), then verify again."""
    from dataprep.build.finalize import PARTS
    from dataprep.build.plan import BuildError, check_inputs
    from dataprep.core.config import ConfigError
    from model.config import load_config  # the whole experiment file, as build_shards reads it
    from model.scoring import checked_factory

    try:
        cfg = load_config(config, overrides)
        check_inputs(cfg, str(out))
        factory = checked_factory(cfg.build.curation)  # a curated shard is rebuilt with it
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, names in broken.items():
        for name in names:
            # Removing the part record marks the shard unfinished; the builder redoes only it.
            storage.remove(storage.join(out, split, PARTS, name.removesuffix(".tar") + ".json"))
            print(f"repair: rebuilding {split}/{name}")
    from dataprep.build.executor import build_on_ray

    try:
        build_on_ray(cfg, out, scorer_factory=factory)
    except (BuildError, storage.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    problems, _, counts = report(out)
    for prob in problems:
        print(f"problem after repair: {prob}")
    if not problems:
        print(f"repaired: {out} is sound: {counts}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
