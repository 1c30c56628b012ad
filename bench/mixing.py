"""Per-micro-batch corpus and language mix, read through the real loader (issue 17).

    python bench/mixing.py --shards outputs/demo/shards [--config configs/demo.yaml]
        [--epochs 5] [--set loader.sampling.by=lang --set loader.sampling.alpha=0.3 ...]

Every rank of ``--world-size`` (default 2, as the demo's deepspeed) reads ``--epochs`` epochs of
``<shards>/train`` with the config's micro batch, loader section and model crop length (as
``jobs/pretrain.py`` builds it, minus the tokenizer). Printed: the mean Shannon entropy (bits)
of the corpus and of the language labels inside one micro-batch, the same for the whole split
(the ceiling a perfectly mixed batch approaches), the mean number of distinct corpora and
languages per batch, and the share of draws per corpus and language over all read batches.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

from dataprep.core.shards import INDEX
from dataprep.loader import ShardLoader
from model.config import load_config


def entropy(counts: Counter[str]) -> float:
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values() if c)


def measure(args: argparse.Namespace) -> dict:
    cfg = load_config(args.config, args.set)
    split = Path(args.shards) / "train"
    per_batch: dict[str, list[float]] = {"corpus": [], "lang": []}
    distinct: dict[str, list[int]] = {"corpus": [], "lang": []}
    drawn: dict[str, Counter[str]] = {"corpus": Counter(), "lang": Counter()}
    for rank in range(args.world_size):
        loader = ShardLoader.from_config(
            cfg.loader, split, features=cfg.features, tokenize=None,
            max_frames=cfg.model.audio.max_frames, batch_size=cfg.train.micro_batch,
            seed=cfg.train.seed, rank=rank, world_size=args.world_size,
        )  # fmt: skip
        for _ in range(args.epochs):
            for batch in loader.iter_epoch():
                for field, values in (("corpus", batch["corpora"]), ("lang", batch["langs"])):
                    c = Counter(values)
                    per_batch[field].append(entropy(c))
                    distinct[field].append(len(c))
                    drawn[field].update(c)
    import pyarrow.parquet as pq

    index = pq.read_table(split / INDEX, columns=["corpus", "lang"]).to_pydict()
    data = {f: Counter(str(x or "") for x in index[f]) for f in ("corpus", "lang")}
    out: dict = {"batches": len(per_batch["corpus"]), "batch_size": cfg.train.micro_batch}
    for f in ("corpus", "lang"):
        n = max(1, len(per_batch[f]))
        total = sum(drawn[f].values()) or 1
        out[f] = {
            "batch_entropy_bits": round(sum(per_batch[f]) / n, 3),
            "split_entropy_bits": round(entropy(data[f]), 3),
            "distinct_per_batch": round(sum(distinct[f]) / n, 2),
            "draw_share": {k: round(v / total, 3) for k, v in sorted(drawn[f].items())},
            "data_share": {
                k: round(v / sum(data[f].values()), 3) for k, v in sorted(data[f].items())
            },
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shards", required=True)
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    print(json.dumps(measure(p.parse_args()), indent=1))


if __name__ == "__main__":
    main()
