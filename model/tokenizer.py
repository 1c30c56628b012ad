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

Language tags (``model.text.lang_tags: true``; CLARA prepends one): the tokenizer is trained with
one user-defined piece ``<lang:xx>`` per base language code of its texts (:func:`tag_langs`), and
a tagged sequence is ``[bos] <lang:xx> pieces... [eos]``. The language is the text's own (a
sample's ``texts[].lang``, else the sample's ``lang``; at inference ``embed_text(lang=...)``);
a text without a language gets no tag, as in training. :func:`make_tokenize` is the one place
that decides whether tags are added, for the loader, the evaluator and the API alike. Towers
with their own vocabulary (``minilm``, ``hf``) refuse the option at config load.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch

from dataprep.core.lang import base_lang
from model.config import TextEncoderConfig
from model.tokenizer_balance import balanced_sample, kept_chars

log = logging.getLogger(__name__)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_TAG = re.compile(r"<lang:([a-z0-9]+)>")


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
        # base language code -> id of its <lang:xx> piece (empty: trained without tags)
        self.lang_tags: dict[str, int] = {
            m.group(1): i
            for i in range(int(sp.GetPieceSize()))
            if (m := _TAG.fullmatch(sp.IdToPiece(i)))
        }

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

    def tag_id(self, lang: str | None) -> int | None:
        """The id of ``lang``'s tag piece; None for no language; ValueError when the tokenizer
        has no tag for it (a language its training texts did not have)."""
        code = base_lang(lang)
        if code is None:
            return None
        if code not in self.lang_tags:
            raise ValueError(
                f"tokenizer {self.path} has no language tag for {lang!r} "
                f"(tags: {sorted(self.lang_tags) or 'none, trained without --lang-tags'})"
            )
        return self.lang_tags[code]

    def encode_batch(
        self, texts: Sequence[str], max_len: int, langs: Sequence[str | None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids LongTensor[B, max_len], mask BoolTensor[B, max_len])``; mask True on tokens.

        Every row is ``bos + pieces + eos`` truncated to ``max_len`` (the eos is kept so the
        model always sees where the text ends) and right-padded with ``pad_id``. A fixed width
        keeps tensor shapes static across steps. ``langs`` (one per text) puts the language's
        tag piece right after ``bos`` (kept on truncation); None: no tags.
        """
        if langs is not None and len(langs) != len(texts):
            raise ValueError(f"{len(langs)} languages for {len(texts)} texts")
        tags = [self.tag_id(x) for x in langs] if langs is not None else [None] * len(texts)
        if max_len < 2 + any(t is not None for t in tags):
            raise ValueError(f"max_len must be >= 2 (bos + eos; 3 with a tag), got {max_len}")
        ids = torch.full((len(texts), max_len), PAD_ID, dtype=torch.long)
        # one thread: sentencepiece's batch threading costs more than it saves at batch sizes
        # of a few hundred short captions (measured 4x slower), and workers run in parallel anyway
        pieces = self._sp.Encode(list(texts), out_type=int, num_threads=1)
        for row, (p, tag) in enumerate(zip(pieces, tags)):
            head = [BOS_ID] if tag is None else [BOS_ID, tag]
            seq = [*head, *p[: max_len - 1 - len(head)], EOS_ID]
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return ids, ids != PAD_ID


def lang_tag(lang: str) -> str:
    """The language-tag piece of ``lang`` (CLARA prepends one to a text): ``<lang:xx>``, ``xx``
    the base code (``zh-CN`` -> ``<lang:zh>``)."""
    code = base_lang(lang)
    if code is None or not _TAG.fullmatch(f"<lang:{code}>"):
        raise ValueError(f"no language tag for language code {lang!r}")
    return f"<lang:{code}>"


def tag_langs(langs: Iterable[str | None]) -> list[str]:
    """The base codes that get a tag piece: every language of the training texts, sorted."""
    return sorted({c for c in (base_lang(x) for x in langs) if c})


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
    lang_tags: Sequence[str] | bool = (),
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
    if isinstance(lang_tags, bool):
        lang_tags = tag_langs(langs or ()) if lang_tags else ()
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
        kept = kept_chars(lines, line_langs, vocab_size)
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
            user_defined_symbols=sorted({lang_tag(x) for x in lang_tags}),
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


# (texts, langs=None) -> (ids, mask): see make_tokenize
Tokenize = Callable[..., tuple[torch.Tensor, torch.Tensor]]

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
    if text.lang_tags and not tok.lang_tags:
        raise ValueError(
            f"model.text.lang_tags is on but tokenizer {path} has no <lang:xx> pieces: train it "
            f"with `pipelines/train_tokenizer.py --lang-tags` (or let jobs/pretrain.py train one)"
        )
    return tok


def _encode(
    tok: TextTokenizer, max_len: int, tagged: bool, texts: Sequence[str],
    langs: Sequence[str | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    if tagged:
        return tok.encode_batch(texts, max_len, langs)  # type: ignore[call-arg]
    return tok.encode_batch(texts, max_len)


def make_tokenize(tok: TextTokenizer, text: TextEncoderConfig) -> Tokenize:
    """``(texts, langs=None) -> (ids [B, L], mask [B, L])`` with ``L = text.max_len``: the one
    place language tags are added (``text.lang_tags``; ``langs`` is ignored without them).
    Picklable, so the loader's worker processes can receive it."""
    return partial(_encode, tok, text.max_len, bool(text.lang_tags))
