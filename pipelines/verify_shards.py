"""Verify a shard set: every tar against shards.json (size, sha256), every member decoded,
index.parquet consistent with the tars. With --repair, rebuild only broken or missing shards.

    python pipelines/verify_shards.py OUT_DIR
    python pipelines/verify_shards.py OUT_DIR --repair --config configs/demo.yaml

Exit status 0 when sound (or repaired), 1 when problems remain.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataprep.core import shards  # noqa: E402
from dataprep.core.sample import SPLITS  # noqa: E402


def verify_all(out: Path) -> tuple[list[str], dict[str, list[str]]]:
    problems: list[str] = []
    broken: dict[str, list[str]] = {}
    splits = [s for s in SPLITS if (out / s).is_dir()]
    if not splits:
        return [f"{out} holds no split directories ({', '.join(SPLITS)})"], {}
    for split in splits:
        probs, bad = shards.verify_split(out / split)
        problems += [f"{split}/{p}" for p in probs]
        if bad:
            broken[split] = bad
    return problems, broken


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="shard set root (holds train/, val/, build.json)")
    p.add_argument("--repair", action="store_true", help="rebuild broken/missing shards (needs --config)")
    p.add_argument("--config", help="the config the set was built with (for --repair)")
    p.add_argument("overrides", nargs="*", help="config overrides used for the build: section.key=value")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    problems, broken = verify_all(out)
    for prob in problems:
        print(f"problem: {prob}")
    if not problems:
        n = sum(json.loads((out / s / shards.SHARDS_JSON).read_text())["samples"] for s in SPLITS if (out / s / shards.SHARDS_JSON).exists())
        print(f"ok: {out} is sound ({n} samples)")
        return 0
    if not args.repair:
        print(f"{len(problems)} problem(s); rerun with --repair --config FILE to rebuild the broken shards")
        return 1
    if not args.config:
        print("error: --repair needs --config (the config the set was built with)", file=sys.stderr)
        return 2
    from dataprep.distributed import PARTS

    for split, names in broken.items():
        for name in names:
            # Removing the part record marks the shard unfinished; the builder redoes only it.
            (out / split / PARTS / (name.removesuffix(".tar") + ".json")).unlink(missing_ok=True)
            print(f"repair: rebuilding {split}/{name}")
    import build_shards  # the sibling entry script: same code path as a normal (resumed) build

    rc = build_shards.main(["--config", args.config, "--out", str(out), *args.overrides])
    if rc != 0:
        return rc
    problems, _ = verify_all(out)
    for prob in problems:
        print(f"problem after repair: {prob}")
    if not problems:
        print(f"repaired: {out} is sound")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
