"""Train the project's sentencepiece tokenizer on the texts of a shard set.

    python pipelines/train_tokenizer.py --shards outputs/shards --out outputs/shards/tokenizer.model

Reads every sample's ``txt`` and all its ``texts`` entries (originals, templates, nlpaug and LLM
captions) from ``<shards>/train`` (or ``--split``), without decoding any audio, and writes a
unigram model with byte fallback atomically to ``--out``. The trainer looks for
``<shards>/tokenizer.model`` by default.

``--alpha`` < 1 trains on a language-balanced sample (share of language ``l`` ∝ ``n_l^alpha``,
as ``loader.sampling``); ``--lang-tags`` adds a ``<lang:xx>`` piece per language of the data.
Printed: the byte-fallback rate per language (share of pieces that are raw bytes).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dataprep.loader import iter_shard_texts
from model.tokenizer import Tokenizer, byte_fallback_rate, train_tokenizer


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
    ap.add_argument("--alpha", type=float, default=1.0, help="language temperature, in (0, 1]")
    ap.add_argument("--lang-tags", action="store_true", help="a <lang:xx> piece per language")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    splits = args.split or ["train"]
    root = Path(args.shards)
    try:
        pairs = [p for s in splits for p in iter_shard_texts(root / s, langs=True)]
        langs, texts = [lang for lang, _ in pairs], [t for _, t in pairs]
        summary = train_tokenizer(
            texts, args.out, vocab_size=args.vocab_size, langs=langs, alpha=args.alpha,
            lang_tags=args.lang_tags,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as err:
        print(f"train_tokenizer: {err}", file=sys.stderr)
        return 2
    print(f"wrote {summary['out']} (vocab {summary['vocab_size']}, {summary['texts']} texts)")
    tok = Tokenizer(summary["out"])
    for lang in sorted(set(langs)):
        mine = [t for t, x in zip(texts, langs) if x == lang]
        rate = byte_fallback_rate(tok, mine)
        print(f"byte fallback {lang or '-'}: {rate:.3f} of pieces ({len(mine)} texts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
