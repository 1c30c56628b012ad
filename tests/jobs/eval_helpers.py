"""Test helper: a tiny exported CLAP model (fp32 ``final/`` layout) made at run time.

This is the export format ``jobs/pretrain.py`` writes (model.pt + config.yaml +
tokenizer.model), produced here without training so evaluation tests stay fast.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model.config import load_config
from dataprep.core.atomic import atomic_write_bytes
from model.tokenizer import train_tokenizer
from model.checkpoint import config_yaml
from model.clap import build_model

REPO = Path(__file__).resolve().parents[2]
TEXTS = [
    "the sound of a dog barking", "rain falling on a roof", "birds chirping in the morning",
    "a crowd clapping", "a siren wailing", "church bells ringing", "a piano melody",
    "someone playing a drum kit", "a man speaks", "a woman talks while a phone rings",
    "yes no stop go left right up down on off", "जी हाँ नहीं रुको", "是 不 停 走 左 右 上 下",
    "das Geräusch von einem Hund", "le son de la pluie", "a person speaking in an angry voice",
] * 4


def make_export(out: Path, seed: int = 0, overrides: tuple[str, ...] = ()) -> Path:
    """Write ``out/final`` for a seeded random model of configs/test_small.yaml's architecture."""
    cfg = load_config(REPO / "configs" / "test_small.yaml", list(overrides))
    final = out / "final"
    final.mkdir(parents=True, exist_ok=True)
    train_tokenizer(TEXTS, final / "tokenizer.model", vocab_size=cfg.model.text.vocab_size)
    torch.manual_seed(seed)
    model = build_model(cfg.model, cfg.features.n_mels)
    torch.save(model.state_dict(), final / "model.pt")
    atomic_write_bytes(final / "config.yaml", config_yaml(cfg))
    return final
