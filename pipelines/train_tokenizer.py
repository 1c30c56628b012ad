"""Train the project's sentencepiece tokenizer on the texts of a shard set.

    python pipelines/train_tokenizer.py --shards outputs/shards --out outputs/shards/tokenizer.model

Reads every sample's ``txt`` and all its ``texts`` entries (originals, templates, nlpaug and LLM
captions) from ``<shards>/train`` (or ``--split``), without decoding any audio, and writes a
unigram model with byte fallback atomically to ``--out``. The trainer looks for
``<shards>/tokenizer.model`` by default.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dataprep.loader import iter_shard_texts
from model.tokenizer import train_tokenizer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shards", required=True, help="shard set root (holds <split>/shards.json)")
    ap.add_argument("--out", required=True, help="output .model file (written atomically)")
    ap.add_argument("--vocab-size", type=int, default=4000, help="upper bound on the vocabulary")
    ap.add_argument(
        "--split", action="append", default=None, help="split(s) to read (default: train)"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    splits = args.split or ["train"]
    root = Path(args.shards)
    try:
        texts = [t for s in splits for t in iter_shard_texts(root / s)]
        summary = train_tokenizer(texts, args.out, vocab_size=args.vocab_size)
    except (FileNotFoundError, ValueError) as err:
        print(f"train_tokenizer: {err}", file=sys.stderr)
        return 2
    print(f"wrote {summary['out']} (vocab {summary['vocab_size']}, {summary['texts']} texts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
