"""The text towers' tokenizers: the ONE owner of tokenizer resolution and training.

Ours is a sentencepiece unigram model with byte fallback, trained by :func:`train_tokenizer` on
an iterable of texts (``pipelines/train_tokenizer.py`` and the trainer feed it every text of the
training shards: ``txt`` and all ``texts`` entries). Byte fallback means no text is ever mapped
to ``<unk>``, whatever its script. ``text.kind: minilm`` towers use the packaged MiniLM
WordPiece tokenizer behind the same ``encode_batch`` interface (:class:`MiniLMTokenizer`).

Resolution: :func:`tokenizer_path` (``tokenizer.path``, else ``<shards>/tokenizer.model``, else
a file to train into ``<out>/tokenizer.model``), :func:`load_tokenizer` (the tokenizer a text
tower config needs, vocabulary checked) and :func:`make_tokenize` (the picklable
``texts -> (ids, mask)`` callable the loader and the evaluator are given).

Special ids are fixed at training time so the model can rely on them:
``pad=0, unk=1, bos=2, eos=3``. A sequence is ``[bos] pieces... [eos]`` then padding.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch

from dataprep.core.balance import group_probs, quotas
from model.config import TextEncoderConfig

log = logging.getLogger(__name__)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class Tokenizer:
    """Wraps a sentencepiece model file; picklable (dataloader workers reload it lazily)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"tokenizer model not found: {self.path} "
                f"(train one with `python pipelines/train_tokenizer.py --shards DIR --out FILE`)"
            )
        self._sp: Any = None
        self._load()

    def _load(self) -> None:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        if not sp.Load(str(self.path)):
            raise ValueError(f"{self.path} is not a sentencepiece model")
        if sp.pad_id() != PAD_ID or sp.bos_id() != BOS_ID or sp.eos_id() != EOS_ID:
            raise ValueError(
                f"{self.path}: special ids pad/bos/eos = "
                f"{sp.pad_id()}/{sp.bos_id()}/{sp.eos_id()}, "
                f"expected {PAD_ID}/{BOS_ID}/{EOS_ID} (train it with pipelines/train_tokenizer.py)"
            )
        self._sp = sp

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._load()

    @property
    def vocab_size(self) -> int:
        return int(self._sp.GetPieceSize())

    @property
    def pad_id(self) -> int:
        return PAD_ID

    def encode(self, text: str) -> list[int]:
        return list(self._sp.EncodeAsIds(text))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._sp.DecodeIds([int(i) for i in ids if int(i) > EOS_ID]))

    def encode_batch(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids LongTensor[B, max_len], mask BoolTensor[B, max_len])``; mask True on tokens.

        Every row is ``bos + pieces + eos`` truncated to ``max_len`` (the eos is kept so the
        model always sees where the text ends) and right-padded with ``pad_id``. A fixed width
        keeps tensor shapes static across steps.
        """
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 (bos + eos), got {max_len}")
        ids = torch.full((len(texts), max_len), PAD_ID, dtype=torch.long)
        # one thread: sentencepiece's batch threading costs more than it saves at batch sizes
        # of a few hundred short captions (measured 4x slower), and workers run in parallel anyway
        pieces = self._sp.Encode(list(texts), out_type=int, num_threads=1)
        for row, p in enumerate(pieces):
            seq = [BOS_ID, *p[: max_len - 2], EOS_ID]
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return ids, ids != PAD_ID


_META_PIECES = 4 + 256  # pad/unk/bos/eos + the byte-fallback pieces


def _kept_chars(lines: Sequence[str], langs: Sequence[str], vocab_size: int) -> set[str] | None:
    """The characters the vocabulary can afford as pieces, or None when all fit.

    Sentencepiece needs a piece for every character of its coverage (>= 0.98) plus the meta
    pieces. Multilingual captions on a small vocabulary exceed that (CJK, Devanagari, Arabic...).
    With byte fallback the rare characters are still encoded, as bytes, so only some characters
    (at most half of the non-meta vocabulary) are kept in the training text: first each
    language's most frequent few (a quarter of the budget shared out, so no language's script is
    left to bytes alone; issue 17), then the most frequent of the (balanced) text overall.
    """
    room = vocab_size - _META_PIECES
    if room < 8:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: byte fallback alone takes {_META_PIECES} pieces"
        )
    chars: Counter[str] = Counter()
    per_lang: dict[str, Counter[str]] = {}
    for line, lang in zip(lines, langs):
        chars.update(line)
        per_lang.setdefault(lang, Counter()).update(line)
    budget = room // 2
    if len(chars) <= budget:
        return None
    floor = max(1, budget // (4 * len(per_lang)))
    kept = {c for lang in sorted(per_lang) for c, _ in per_lang[lang].most_common(floor + 1)}
    for c, _ in chars.most_common():
        if len(kept) >= budget:
            break
        kept.add(c)
    return kept


def lang_tag(lang: str) -> str:
    """The language-tag token of ``lang`` (CLARA prepends one to a text): ``<lang:xx>``."""
    return f"<lang:{lang}>"


def balanced_sample(
    texts: Sequence[str], langs: Sequence[str], alpha: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """``texts`` resampled to as many texts, language ``l`` getting a share ``∝ n_l^alpha`` (the
    loader's temperature sampling): rare languages repeat, frequent ones are subsampled;
    deterministic for a seed. Returns (texts, their languages)."""
    import numpy as np

    by_lang: dict[str, list[str]] = {}
    for t, lang in zip(texts, langs):
        by_lang.setdefault(lang, []).append(t)
    want = quotas(group_probs({g: len(v) for g, v in by_lang.items()}, alpha), len(texts))
    out_t: list[str] = []
    out_l: list[str] = []
    for g, n in want.items():
        pool = by_lang[g]
        rng = np.random.default_rng([seed, len(pool)])
        order: list[int] = []
        while len(order) < n:
            order += [int(i) for i in rng.permutation(len(pool))[: n - len(order)]]
        out_t += [pool[i] for i in order]
        out_l += [g] * len(order)
    return out_t, out_l


def byte_fallback_rate(tok: Tokenizer, texts: Sequence[str]) -> float:
    """The share of a text's pieces that are byte-fallback pieces (<0xNN>), over ``texts``."""
    pieces = [i for t in texts for i in tok.encode(t)]
    if not pieces:
        return 0.0
    return sum(bool(tok._sp.IsByte(i)) for i in pieces) / len(pieces)


def train_tokenizer(
    texts: Iterable[str],
    out: str | os.PathLike[str],
    vocab_size: int = 4000,
    *,
    character_coverage: float = 0.9995,
    seed_sentencepiece_size: int = 100000,
    langs: Sequence[str] | None = None,
    alpha: float = 1.0,
    lang_tags: Sequence[str] = (),
) -> dict[str, Any]:
    """Train a unigram model on ``texts`` and write ``out`` (.model) atomically.

    ``vocab_size`` is an upper bound: on a small corpus sentencepiece cannot fill a large vocab,
    so ``hard_vocab_limit`` is off and the actual size is returned. Returns a summary dict.
    ``langs`` (one code per text) with ``alpha < 1`` trains on :func:`balanced_sample` of the
    texts; the kept characters are chosen per language either way. ``lang_tags`` adds one
    piece :func:`lang_tag` per language code (never split, never byte-encoded).
    """
    import sentencepiece as spm

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tok-", dir=out.parent) as tmp:
        # sentencepiece reads one sentence per line: newlines inside a text would split it
        texts = list(texts)
        tagged = zip(texts, langs if langs is not None else [""] * len(texts), strict=True)
        pairs = [(" ".join(t.split()), lang) for t, lang in tagged]
        pairs = [(t, lang) for t, lang in pairs if t]
        if not pairs:
            raise ValueError("no texts to train a tokenizer on")
        lines, line_langs = [t for t, _ in pairs], [lang for _, lang in pairs]
        if alpha < 1.0:
            lines, line_langs = balanced_sample(lines, line_langs, alpha)
        kept = _kept_chars(lines, line_langs, vocab_size)
        if kept is not None:
            log.info(
                "tokenizer: %d characters kept as pieces over %d language(s) (rest: bytes)",
                len(kept),
                len(set(line_langs)),
            )
            lines = [
                t for t in ("".join(c if c in kept else " " for c in t).strip() for t in lines) if t
            ]
        corpus = Path(tmp) / "texts.txt"
        corpus.write_text("".join(t + "\n" for t in lines), encoding="utf-8")
        n_texts, n_chars = len(lines), sum(len(t) for t in lines)
        prefix = Path(tmp) / "sp"
        spm.SentencePieceTrainer.Train(
            input=str(corpus),
            model_prefix=str(prefix),
            model_type="unigram",
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            byte_fallback=True,
            character_coverage=character_coverage,
            seed_sentencepiece_size=seed_sentencepiece_size,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            normalization_rule_name="nmt_nfkc",
            user_defined_symbols=[lang_tag(x) for x in lang_tags],
            num_threads=1,  # deterministic output; training is fast at our sizes
            minloglevel=2,
        )
        staged = Path(tmp) / "final.model"
        shutil.copyfile(f"{prefix}.model", staged)
        os.replace(staged, out)  # same directory: atomic
    tok = Tokenizer(out)
    summary = {"out": str(out), "texts": n_texts, "chars": n_chars, "vocab_size": tok.vocab_size}
    log.info("tokenizer: %s", summary)
    return summary


class MiniLMTokenizer:
    """The packaged MiniLM WordPiece tokenizer behind :class:`Tokenizer`'s interface
    (``text.kind: minilm`` towers have their own vocabulary). Loaded lazily; picklable."""

    def __init__(self) -> None:
        self._tok: Any = None

    def _get(self) -> Any:
        if self._tok is None:
            from model.text_encoder import minilm_tokenizer

            self._tok = minilm_tokenizer()
        return self._tok

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._tok = None

    @property
    def vocab_size(self) -> int:
        return int(self._get().vocab_size)

    def encode_batch(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self._get()(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=max_len,
            return_tensors="pt",
        )
        return enc["input_ids"].long(), enc["attention_mask"].bool()


class TextTokenizer(Protocol):
    """What the model side needs of a tokenizer (both kinds implement it)."""

    @property
    def vocab_size(self) -> int: ...

    def encode_batch(
        self, texts: Sequence[str], max_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


Tokenize = Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]

TOKENIZER_FILE = "tokenizer.model"


def tokenizer_path(
    configured: str | os.PathLike[str] | None, shards_root: Path, out: Path
) -> tuple[Path, bool]:
    """``(path, must_train)`` for our sentencepiece tokenizer.

    ``configured`` (``tokenizer.path``) must exist; else ``<shards_root>/tokenizer.model``;
    else ``<out>/tokenizer.model``, with ``must_train`` True while that file does not exist
    (the trainer then trains it on the training texts with :func:`train_tokenizer`).
    """
    if configured:
        path = Path(configured)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer.path={path} does not exist")
        return path, False
    if (shards_root / TOKENIZER_FILE).is_file():
        return shards_root / TOKENIZER_FILE, False
    path = out / TOKENIZER_FILE
    return path, not path.is_file()


def load_tokenizer(text: TextEncoderConfig, path: str | os.PathLike[str] | None) -> TextTokenizer:
    """The tokenizer a text tower needs: ``path`` (our sentencepiece model) for
    ``kind: transformer``, refusing a vocabulary larger than ``text.vocab_size``; the packaged
    WordPiece for ``minilm``; the directory's own fast tokenizer for ``hf`` (``text.path``)."""
    if text.kind == "minilm":
        return MiniLMTokenizer()
    if text.kind == "hf":
        from model.hf_text import HFTokenizer

        return HFTokenizer(text.path)
    if path is None:
        raise FileNotFoundError("no tokenizer model given")
    tok = Tokenizer(path)
    if tok.vocab_size > text.vocab_size:
        raise ValueError(
            f"tokenizer {path} has {tok.vocab_size} pieces > "
            f"model.text.vocab_size={text.vocab_size}"
        )
    return tok


def make_tokenize(tok: TextTokenizer, text: TextEncoderConfig) -> Tokenize:
    """``texts -> (ids [B, L], mask [B, L])`` with ``L = text.max_len``; picklable, so the
    loader's worker processes can receive it."""
    return partial(tok.encode_batch, max_len=text.max_len)
