"""Text towers from ``transformers``, loaded from a local model directory only.

- Encoder models (BERT / RoBERTa / XLM-R family, CLAP's RoBERTa text model): pooling ``cls``
  (first token), ``mean`` (over real tokens) or ``pooler`` (the model's own pooler output, e.g.
  the dense+tanh head LAION-CLAP's text projection reads).
- Decoder-only models (GPT-2 family, causal attention): pooling ``last`` — the hidden state of
  the last non-pad token, as MS-CLAP 2023. Position ids are counted over real tokens, so a
  left-padding tokenizer gives the same embedding as a right-padding one.

Each tower comes with its own fast tokenizer from the same directory (:class:`HFTokenizer`),
its padding side and maximum length taken from the saved tokenizer and the model's position
table. Nothing is downloaded: ``local_files_only=True`` everywhere; a directory that is not a
model, a slow-only tokenizer, or a tokenizer whose ids do not fit the model's vocabulary is one
:class:`HFLoadError` naming what and where.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from model.hf_common import DROPOUT_KEYS, HFLoadError, load_hf_config, load_hf_model, offline_env
from model.layers import masked_mean

POOLINGS = ("cls", "mean", "pooler", "last")


def text_config_of(config: Any) -> Any:
    """A whole ``ClapModel`` directory serves its text half (RoBERTa) as a text tower."""
    return config.text_config if config.model_type == "clap" else config


def _load_text_model(path: str | os.PathLike[str], config: Any, dropout: float | None) -> nn.Module:
    if config.model_type != "clap":
        return load_hf_model(path, config, dropout)
    from transformers import ClapModel

    if dropout is not None:
        for key in DROPOUT_KEYS:
            if hasattr(config.text_config, key):
                setattr(config.text_config, key, dropout)
    return load_hf_model(path, config, None, ClapModel, part="text_model.").text_model


def is_decoder_only(config: Any) -> bool:
    """Causal-LM-only families (GPT-2, Llama, Qwen, ...) as opposed to masked-LM encoders."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    t = config.model_type
    return t in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and t not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def max_positions(config: Any) -> int | None:
    for key in ("max_position_embeddings", "n_positions"):
        v = getattr(config, key, None)
        if isinstance(v, int) and v > 0:
            # RoBERTa-style position ids start after padding_idx + 1, so 2 slots are unusable.
            return (
                v - 2
                if config.model_type in {"roberta", "xlm-roberta", "clap_text_model", "camembert"}
                else v
            )
    return None


class HFTokenizer:
    """A directory's fast tokenizer behind :class:`model.tokenizer.Tokenizer`'s interface.

    ``encode_batch(texts, max_len)`` -> ``ids [B, max_len]`` int64, ``mask`` bool; padded on the
    tokenizer's own side; ``max_len`` is capped at the model's maximum. Decoder-only tokenizers
    without a pad token pad with EOS (the mask, not the id, marks padding). Picklable (reloads
    from ``path`` in the worker)."""

    def __init__(self, path: str | os.PathLike[str], model_config: Any | None = None) -> None:
        self.path = str(path)
        config = text_config_of(model_config if model_config is not None else load_hf_config(path))
        self.model_max = max_positions(config)
        self.model_vocab = int(config.vocab_size)
        self._tok: Any = None
        self._get()  # fail at construction, not in the first batch

    def _get(self) -> Any:
        if self._tok is None:
            offline_env()
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            except (OSError, ValueError, TypeError) as err:
                raise HFLoadError(f"{self.path}: no loadable tokenizer: {err}") from None
            if not tok.is_fast:
                raise HFLoadError(
                    f"{self.path}: tokenizer {type(tok).__name__} is not a fast "
                    f"(tokenizers) tokenizer"
                )
            if len(tok) > self.model_vocab:
                raise HFLoadError(
                    f"{self.path}: tokenizer has {len(tok)} tokens but the model's "
                    f"vocabulary has {self.model_vocab}: they do not match"
                )
            if tok.pad_token is None:
                if tok.eos_token is None:
                    raise HFLoadError(f"{self.path}: tokenizer has neither a pad nor an eos token")
                tok.pad_token = tok.eos_token
            self._tok = tok
        return self._tok

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_tok"} | {"_tok": None}

    @property
    def vocab_size(self) -> int:
        return len(self._get())

    @property
    def padding_side(self) -> str:
        return str(self._get().padding_side)

    def max_length(self, max_len: int) -> int:
        caps = [max_len, self.model_max, self._get().model_max_length]
        return min(int(c) for c in caps if c is not None and c > 0)

    def encode_batch(self, texts: Sequence[str], max_len: int) -> tuple[Tensor, Tensor]:
        enc = self._get()(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length(max_len),
            return_tensors="pt",
        )
        return enc["input_ids"].long(), enc["attention_mask"].bool()


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last real token per row (either padding side); 0 for an all-pad row."""
    pos = torch.arange(mask.shape[1], device=mask.device)
    return (mask.long() * pos).amax(dim=1)


class HFText(nn.Module):
    """A transformers text model as a polyclap text tower.

    ``forward(ids, mask)`` -> ``(pooled [B, H], tokens [B, L, H], mask [B, L] bool)``, the
    contract of :class:`model.text_encoder.TextEncoder`'s implementations."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        pooling: str | None = None,
        dropout: float | None = None,
        freeze: bool = False,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        full = model.config if model is not None else load_hf_config(path)
        config = text_config_of(full)
        self.decoder_only = is_decoder_only(config)
        if pooling in (None, "auto"):
            pooling = "last" if self.decoder_only else "cls"
        if pooling not in POOLINGS:
            raise HFLoadError(f"text pooling {pooling!r} is not one of {POOLINGS}")
        if self.decoder_only and pooling in ("cls", "pooler"):
            raise HFLoadError(
                f"{path}: {config.model_type} is decoder-only (causal): the first "
                f"token sees nothing else; use pooling last or mean"
            )
        self.pooling = pooling
        self.model = model if model is not None else _load_text_model(path, full, dropout)
        self.freeze = freeze
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()
        if pooling == "pooler" and getattr(self.model, "pooler", None) is None:
            raise HFLoadError(f"{path}: {type(self.model).__name__} has no pooler")
        self.out_dim = int(config.hidden_size)

    def train(self, mode: bool = True) -> HFText:
        super().train(mode)
        if self.freeze:
            self.model.eval()  # a frozen tower applies no dropout either
        return self

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if ids.dim() != 2 or ids.shape != mask.shape:
            raise ValueError(
                f"ids/mask must both be [B, L], got {tuple(ids.shape)}, {tuple(mask.shape)}"
            )
        return self._run({"input_ids": ids}, mask.bool())

    def encode_embeds(self, embeds: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The model on input embeddings ``[B, L, H]`` instead of token ids (CALM: acoustic
        tokens in the language model's input space), pooled as the text is."""
        if embeds.dim() != 3 or embeds.shape[:2] != mask.shape or embeds.shape[2] != self.out_dim:
            raise ValueError(
                f"embeds must be [B, L, {self.out_dim}] with mask [B, L], got "
                f"{tuple(embeds.shape)}, {tuple(mask.shape)}"
            )
        return self._run({"inputs_embeds": embeds}, mask.bool())

    def embed_tokens(self, ids: Tensor) -> Tensor:
        """The model's input embeddings of token ids ``[B, L]`` -> ``[B, L, H]`` (the word
        table only: position and type embeddings are added inside the model, as for ids)."""
        return self.model.get_input_embeddings()(ids)

    def _run(self, inputs: dict[str, Tensor], bmask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        kwargs: dict[str, Tensor] = {**inputs, "attention_mask": bmask.long()}
        if self.decoder_only:
            # Positions over real tokens only: left padding must not shift them.
            kwargs["position_ids"] = (bmask.long().cumsum(1) - 1).clamp_min(0)
        out = self.model(**kwargs)
        tokens = out.last_hidden_state
        if self.pooling == "cls":
            pooled = tokens[:, 0]
        elif self.pooling == "mean":
            pooled = masked_mean(tokens, bmask)
        elif self.pooling == "pooler":
            pooled = out.pooler_output
        else:
            rows = torch.arange(tokens.shape[0], device=tokens.device)
            pooled = tokens[rows, last_token_index(bmask)]
        return pooled, tokens, bmask
