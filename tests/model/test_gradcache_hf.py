"""The gradient cache stays exact with transformers towers (single process), dropout ON.

Models: a TINY RANDOM ASTModel (2 layers, 32 mel bins x 64 frames) as the audio tower and a
TINY RANDOM GPT-2 (2 layers, last-token pooling) as the text tower, saved to tmp dirs by
hf_helpers, both with dropout 0.1 in train mode. Same reference as tests/model/test_gradcache.py:
the chunk forwards in the same order from the same seed, one full-batch backward.
"""

from __future__ import annotations

import pytest
import torch
from hf_helpers import tiny_ast, tiny_gpt2
from test_gradcache import full_batch_backward, grads_of, max_diff

from model.clap import build_model
from model.config import AudioEncoderConfig, LossConfig, ModelConfig, TextEncoderConfig
from model.gradcache import cached_step
from model.hf_text import HFTokenizer
from model.losses import ContrastiveLoss

B = 7
TEXTS = [
    "a dog barks",
    "rain on a roof",
    "a man speaks",
    "a bell rings twice",
    "wind",
    "a car passes by",
    "birds sing",
]


def hf_model_config(ast_dir, gpt2_dir, dropout: float = 0.1) -> ModelConfig:
    return ModelConfig(
        audio=AudioEncoderConfig(kind="ast", path=str(ast_dir), max_frames=64, dropout=dropout),
        text=TextEncoderConfig(kind="hf", path=str(gpt2_dir), max_len=24, dropout=dropout),
        embed_dim=16,
        loss=LossConfig(kind="mga", hard_negative_beta=0.5, label_smoothing=0.1),
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gc_hf")
    ast_dir = tiny_ast(root / "ast", num_mel_bins=32, max_length=64, num_hidden_layers=2)
    gpt2_dir = tiny_gpt2(root / "gpt2")
    cfg = hf_model_config(ast_dir, gpt2_dir)
    torch.manual_seed(0)
    model = build_model(cfg, 32).train()
    ids, mask = HFTokenizer(gpt2_dir).encode_batch(TEXTS, 24)
    g = torch.Generator().manual_seed(3)
    batch = {
        "mel": torch.randn(B, 32, 64, generator=g),
        "mel_lengths": torch.full((B,), 64),
        "ids": ids,
        "mask": mask,
        "groups": torch.tensor([0, 0, 1, 2, 3, 4, 5]),
    }
    return model, batch, ContrastiveLoss(cfg.loss)


@pytest.mark.parametrize("chunk", [2, 3])
def test_cached_equals_full_batch_with_hf_towers_and_dropout(setup, chunk):
    model, batch, loss_fn = setup
    ref = grads_of(model, lambda: full_batch_backward(model, batch, loss_fn, chunk))
    got = grads_of(model, lambda: cached_step(model, batch, loss_fn, chunk))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(got) == sorted(ref)
    assert len(got) >= 0.9 * len(trainable)  # (unused pooler/positions may get none)
    # Relative to each tensor's gradient scale: the random AST's embedding gradients reach
    # ~1e5 here, where float32 rounding alone is ~1e-2 absolute.
    diff = max(
        ((ref[n] - got[n]).abs().max() / ref[n].abs().max().clamp_min(1.0)).item() for n in ref
    )
    print(f"chunk {chunk}: max relative grad diff {diff:.2e}")
    assert diff < 1e-5
    # the dropout is real: another chunking of the reference draws other masks
    other = grads_of(model, lambda: full_batch_backward(model, batch, loss_fn, B))
    assert max_diff(ref, other) > 1e-4
