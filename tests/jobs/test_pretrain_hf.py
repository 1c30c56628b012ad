"""jobs/pretrain.py continues training an imported ClapModel on polyclap shards (issue 15).

Model: a TINY RANDOM transformers ClapModel (HTSAT audio + 1-layer RoBERTa text) saved to a tmp
dir by tests/model/hf_helpers.py; ``model.init_from`` points at it. Shards: real bundled clips
featurized with ``features.preset=htsat``. One process (plain python, ZeRO-0), gradient cache on,
the text tower locked except its last layer (LiT), the audio tower with layer-wise LR decay.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dataprep"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from hf_helpers import tiny_clap
from jobrun import pretrain_args, python, run, single_rank
from test_loader import make_shards

from dataprep.core.config import FeatureConfig

HTSAT = FeatureConfig(preset="htsat")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, corpora_root):
    root = tmp_path_factory.mktemp("hf_run")
    make_shards(corpora_root, root / "shards", n_shards=2, limit=16, features=HTSAT)
    return root, tiny_clap(root / "clap")


def _config(root: Path, clap: Path, **model) -> Path:
    cfg = {
        "features": {"preset": "htsat"},
        "model": {
            "audio": {"kind": "htsat", "path": str(clap), "max_frames": 1001, "dropout": 0.1},
            "text": {"kind": "hf", "path": str(clap), "pooling": "pooler", "max_len": 24},
            "projection": "mlp",
            "embed_dim": 32,
            "init_from": str(clap),
            **model,
        },
        "train": {
            "zero_stage": 0,
            "micro_batch": 8,
            "chunk_size": 4,
            "lr": 1e-3,
            "warmup_steps": 1,
            # DeepSpeed WarmupCosineLR: the first two updates run at lr 0
            "max_steps": 3,
            "save_every": 100,
            "log_every": 1,
            "tensorboard": False,
            "finetune": {
                "text": {"lock": True, "unlocked_layers": 1},
                "audio": {"lr": 3e-4, "layer_decay": 0.5},
                "head_lr": 3e-3,
            },
        },
        "loader": {"num_workers": 0},
    }
    path = root / f"cfg-{len(list(root.glob('cfg-*')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _pretrain(cfg: Path, shards: Path, out: Path, env: dict, port: int):
    e = dict(single_rank(env, port), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return run(python(*pretrain_args(cfg, shards, out)), e, timeout=300)


@pytest.mark.slow
def test_imported_clapmodel_fine_tunes_with_locks(setup, subprocess_env, port):
    root, clap = setup
    out = root / "run"
    p = _pretrain(_config(root, clap), root / "shards", out, subprocess_env, port)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    final = load_file(str(out / "final" / "model.safetensors"))
    src = load_file(str(clap / "model.safetensors"))
    # locked (embeddings) unchanged; the unlocked last layer and the audio tower trained
    key = "text.impl.model.embeddings.word_embeddings.weight"
    assert torch.equal(final[key], src["text_model.embeddings.word_embeddings.weight"])
    q = "text.impl.model.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(final[q], src["text_model.encoder.layer.0.attention.self.query.weight"])
    a = "audio.model.audio_encoder.patch_embed.proj.weight"
    assert not torch.equal(final[a], src["audio_model.audio_encoder.patch_embed.proj.weight"])
    log = p.stderr + p.stdout
    assert "trainable" in log


@pytest.mark.slow
def test_bad_init_and_preset_mismatch_exit_2_before_training(setup, subprocess_env, port, tmp_path):
    root, clap = setup
    empty = tmp_path / "empty"
    empty.mkdir()
    p = _pretrain(
        _config(root, clap, init_from=str(empty)),
        root / "shards",
        tmp_path / "o1",
        subprocess_env,
        port,
    )
    assert p.returncode == 2, p.stderr[-2000:]
    assert "model.init_from" in p.stderr and "step" not in p.stdout
    cfg = yaml.safe_load(_config(root, clap).read_text())
    cfg["features"] = {}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    p = _pretrain(bad, root / "shards", tmp_path / "o2", subprocess_env, port)
    assert p.returncode == 2
    assert "model.audio.kind=htsat reads features.preset=htsat" in p.stderr
    assert not os.path.exists(tmp_path / "o2" / "final")


def test_help_lists_the_finetune_and_pretrained_tower_keys(subprocess_env):
    p = run(python("jobs/pretrain.py", "--help"), subprocess_env, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    for line in (
        "model.init_from: str | None = None",
        "model.init_strict: bool = True",
        "train.finetune.text.unlocked_layers: int = 0",
        "train.finetune.audio.layer_decay: float = 1.0",
        "model.audio.kind: 'patch' | 'htsat' | 'whisper' | 'ast' = 'patch'",
        "features.preset: 'logmel' | 'htsat' | 'whisper' | 'ast' = 'logmel'",
    ):
        assert line in p.stdout, line
