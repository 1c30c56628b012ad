"""Transformer building blocks shared by the audio and text towers.

Pre-norm blocks over ``[B, N, D]`` token sequences with a boolean key-padding mask
(``True`` = real token) and an optional extra boolean attention mask ``[N, N]``
(``True`` = may attend), used by the audio tower's banded last block. All randomness
(dropout) draws from the global torch RNG so that the gradient cache can replay it exactly.

:meth:`Block.value_path` is MGA-CLAP's locality-aware block (Li et al. 2024): the same block's
weights, but the attention output of a token is its own value, projected (no softmax mixing
over tokens) and there is no feed-forward. Token i's output depends on token i's input only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: Tensor, key_mask: Tensor | None, attn_mask: Tensor | None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = None
        if key_mask is not None:
            mask = key_mask[:, None, None, :]  # [B, 1, 1, N]
        if attn_mask is not None:
            mask = attn_mask[None, None] if mask is None else mask & attn_mask[None, None]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def value(self, x: Tensor) -> Tensor:
        """``proj(v)`` per token: the value rows of ``qkv`` then the output projection, as if
        every token attended to itself only (the heads' values, concatenated, are ``v``)."""
        d = x.shape[-1]
        v = F.linear(x, self.qkv.weight[2 * d :], self.qkv.bias[2 * d :])
        return self.proj(v)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)); x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, key_mask: Tensor | None = None, attn_mask: Tensor | None = None
    ) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), key_mask, attn_mask))
        return x + self.drop(self.mlp(self.norm2(x)))

    def value_path(self, x: Tensor) -> Tensor:
        """The locality-aware block: ``x + proj(v(norm1(x)))``, per token, no MLP."""
        return x + self.drop(self.attn.value(self.norm1(x)))


def sinusoid(n: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Standard 1-D sinusoidal table ``[n, dim]`` (dim even)."""
    pos = torch.arange(n, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim)
    )
    table = torch.zeros(n, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over dim 1 of ``[B, N, D]`` counting only ``mask`` (``[B, N]``, True = keep)."""
    if mask is None:
        return x.mean(dim=1)
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


class AttentivePool(nn.Module):
    """One learned query attending over the tokens (masked), as in attentive probing."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.heads = heads
        self.kv = nn.Linear(dim, 2 * dim)
        self.q = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, n, d = x.shape
        h = self.heads
        k, v = self.kv(x).view(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)
        q = self.q(self.query).expand(b, -1, -1).view(b, 1, h, d // h).transpose(1, 2)
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.norm(self.proj(out.transpose(1, 2).reshape(b, d)))
