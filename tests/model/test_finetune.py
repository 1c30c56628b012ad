"""Fine-tuning controls (model.finetune): locks, optimizer groups with layer-wise LR decay,
weights-only init.

Models: TINY RANDOM XLM-R text tower and ClapModel saved to tmp dirs (hf_helpers), and the
project's own tiny patch/sentencepiece towers (model_helpers.tiny_config).
"""

from __future__ import annotations

import types

import pytest
import torch
from hf_helpers import tiny_clap, tiny_xlmr
from model_helpers import N_MELS, tiny_config
from safetensors.torch import save_file

from model.clap import build_model
from model.config import (
    FinetuneConfig,
    ModelConfig,
    TextEncoderConfig,
    TowerTuneConfig,
    TrainConfig,
)
from model.finetune import (
    InitError,
    apply_locks,
    init_weights,
    layer_depths,
    param_groups,
    tower_layers,
    towers,
)
from model.hf_import import clap_model_config


def _train(ft: FinetuneConfig, lr: float = 1e-3, wd: float = 0.05):
    # TrainConfig's no_decay list; the finetune section is passed beside it
    return types.SimpleNamespace(
        lr=lr, weight_decay=wd, no_decay=TrainConfig().no_decay, finetune=ft
    )


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """Patch audio tower + TINY RANDOM XLM-R (2 layers) text tower."""
    d = tiny_xlmr(tmp_path_factory.mktemp("xlmr"))
    cfg = tiny_config().model_copy(
        update={
            "text": TextEncoderConfig(kind="hf", path=str(d), dropout=0.1),
            "loss": ModelConfig().loss,
        }
    )
    return cfg


def _lr_of(groups):
    return {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}


def test_layer_wise_lr_decay_and_per_tower_groups(hf_model):
    torch.manual_seed(0)
    model = build_model(hf_model, N_MELS)
    ft = FinetuneConfig(
        text=TowerTuneConfig(lr=1e-4, layer_decay=0.5, weight_decay=0.01), head_lr=1e-2
    )
    groups = param_groups(model, _train(ft))
    lr = _lr_of(groups)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters())) == len(lr)
    text = towers(model)["text"]
    depths, n_layers = layer_depths(text)
    assert n_layers == 2
    named = dict(text.named_parameters())
    emb = named["model.embeddings.word_embeddings.weight"]
    layer2 = named["model.encoder.layer.1.attention.self.query.weight"]
    pooler = named["model.pooler.dense.weight"]
    assert depths["model.embeddings.word_embeddings.weight"] == 0
    assert lr[id(emb)] == (pytest.approx(1e-4 * 0.5**3), 0.01)
    assert lr[id(layer2)] == (pytest.approx(1e-4 * 0.5), 0.01)
    assert lr[id(pooler)] == (pytest.approx(1e-4), 0.01)
    assert lr[id(named["model.pooler.dense.bias"])][1] == 0.0  # 1-D: never decayed
    # audio tower: train.lr / weight_decay; head (projections, temperature): head_lr
    assert lr[id(model.audio.patch.weight)] == (1e-3, 0.05)
    assert lr[id(model.audio_proj.weight)] == (1e-2, 0.05)
    assert lr[id(model.log_scale)] == (1e-2, 0.0)


def test_lock_all_but_last_layer_lit_style(hf_model):
    model = build_model(hf_model, N_MELS)
    ft = FinetuneConfig(
        text=TowerTuneConfig(lock=True, unlocked_layers=1), audio=TowerTuneConfig(lock=True)
    )
    counts = apply_locks(model, ft)
    text = towers(model)["text"]
    trainable = {n for n, p in text.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith(("model.encoder.layer.1.", "model.pooler.")) for n in trainable
    )
    assert not any(p.requires_grad for p in model.audio.parameters())
    assert counts["audio"] == sum(p.numel() for p in model.audio.parameters())
    model.train()
    assert not model.audio.training and not tower_layers(text)[0].training
    assert tower_layers(text)[1].training and model.audio_proj.training
    groups = param_groups(model, _train(ft))
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    # the frozen layer gets no gradient; the unlocked one does
    ids = torch.randint(5, 100, (2, 8))
    out = model(ids=ids, mask=torch.ones(2, 8, dtype=torch.bool), mel=torch.randn(2, N_MELS, 16))
    (out["text_emb"].sum() + out["audio_emb"].sum()).backward()
    assert tower_layers(text)[0].attention.self.query.weight.grad is None
    assert tower_layers(text)[1].attention.self.query.weight.grad is not None
    with pytest.raises(ValueError, match="unlocked_layers=3 but the text tower has 2 layers"):
        apply_locks(
            build_model(hf_model, N_MELS),
            FinetuneConfig(text=TowerTuneConfig(lock=True, unlocked_layers=3)),
        )


def test_init_from_a_polyclap_export_is_strict(tmp_path):
    cfg = tiny_config()
    torch.manual_seed(1)
    src = build_model(cfg, N_MELS)
    export = tmp_path / "final"
    export.mkdir()
    save_file(src.state_dict(), str(export / "model.safetensors"))  # the export's weights
    (export / "config.json").write_text("{}\n")  # a polyclap config: no transformers model_type
    torch.manual_seed(2)
    dst = build_model(cfg, N_MELS)
    report = init_weights(dst, export)
    assert report.kind == "polyclap" and not report.missing and not report.unexpected
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    # a model with a different head: the mismatch is named, nothing is loaded half-way
    other = build_model(cfg.model_copy(update={"embed_dim": 8}), N_MELS)
    with pytest.raises(
        InitError, match=r"shape-mismatched \['audio_proj.weight \(16, 32\) != \(8, 32\)"
    ):
        init_weights(other, export)
    # strict=False: missing keys are listed and the rest loads
    sd = src.state_dict()
    del sd["log_scale"]
    save_file(sd, str(export / "model.safetensors"))
    with pytest.raises(InitError, match=r"missing \['log_scale'\] \(1\)"):
        init_weights(dst, export)
    assert init_weights(dst, export, strict=False).missing == ["log_scale"]
    with pytest.raises(InitError, match="not a directory"):
        init_weights(dst, tmp_path / "nope")


def test_init_from_a_clapmodel_dir(tmp_path):
    """TINY RANDOM ClapModel: init_from on the polyclap model of the same config loads every
    tensor (towers, MLP projections, temperature)."""
    d = tiny_clap(tmp_path / "clap")
    model = build_model(clap_model_config(d), 64)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    report = init_weights(model, d)
    assert report.kind == "clap" and not report.missing and not report.unexpected
    assert model.audio_proj.linear1.weight.abs().sum() > 0 and model.log_scale.item() > 0
