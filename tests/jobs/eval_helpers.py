"""Test helper: a tiny exported CLAP model (fp32 ``final/`` layout) made at run time.

This is the export format ``jobs/pretrain.py`` writes (``model.weights.write_export``:
model.safetensors + config.json + tokenizer.model), produced here without training so
evaluation tests stay fast.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model.clap import build_model
from model.config import load_config
from model.tokenizer import train_tokenizer
from model.weights import write_export

REPO = Path(__file__).resolve().parents[2]
TEXTS = [
    "the sound of a dog barking",
    "rain falling on a roof",
    "birds chirping in the morning",
    "a crowd clapping",
    "a siren wailing",
    "church bells ringing",
    "a piano melody",
    "someone playing a drum kit",
    "a man speaks",
    "a woman talks while a phone rings",
    "yes no stop go left right up down on off",
    "जी हाँ नहीं रुको",
    "是 不 停 走 左 右 上 下",
    "das Geräusch von einem Hund",
    "le son de la pluie",
    "a person speaking in an angry voice",
] * 4


def make_export(out: Path, seed: int = 0, overrides: tuple[str, ...] = ()) -> Path:
    """Write ``out/final`` for a seeded random model of configs/test_small.yaml's architecture."""
    cfg = load_config(REPO / "configs" / "test_small.yaml", list(overrides))
    final = out / "final"
    out.mkdir(parents=True, exist_ok=True)
    train_tokenizer(TEXTS, out / "tokenizer.model", vocab_size=cfg.model.text.vocab_size)
    torch.manual_seed(seed)
    model = build_model(cfg.model, cfg.features.n_mels)
    write_export(final, model.state_dict(), cfg, tokenizer=out / "tokenizer.model")
    return final
