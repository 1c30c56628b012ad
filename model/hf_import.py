"""Import a transformers ``ClapModel`` directory (LAION-CLAP in transformers format) as polyclap.

:func:`clap_model_config` maps the directory's ``ClapConfig`` to a :class:`ModelConfig`
(``audio.kind=htsat`` and ``text.kind=hf`` on the same directory, ``text.pooling=pooler``,
``projection=mlp``, ``embed_dim=projection_dim``), :func:`clap_state_dict` renames its
safetensors weights to polyclap's parameter names, and :func:`import_clap` builds the model and
loads them strictly. The result's ``encode_audio`` / ``encode_text`` equal
``ClapModel.get_audio_features(...).pooler_output`` / ``get_text_features(...).pooler_output``
on the same inputs (tests/model/test_hf_import.py).

polyclap has one temperature; ClapModel has two (``logit_scale_a`` for audio->text logits,
``logit_scale_t`` for text->audio). ``logit_scale_a`` becomes ``log_scale``; ``logit_scale_t``
is reported in :attr:`ImportReport.dropped`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from model.clap import CLAP, build_model
from model.config import AudioEncoderConfig, ModelConfig, TextEncoderConfig
from model.hf_common import HFLoadError, load_hf_config

# ClapModel parameter prefix -> polyclap parameter prefix
PREFIXES = {
    "audio_model.": "audio.model.",
    "text_model.": "text.impl.model.",
    "audio_projection.": "audio_proj.",
    "text_projection.": "text_proj.",
}
DROPPED = ("logit_scale_t",)


@dataclass
class ImportReport:
    missing: list[str] = field(default_factory=list)  # polyclap keys the directory lacked
    unexpected: list[str] = field(default_factory=list)  # directory keys with no polyclap home
    dropped: list[str] = field(default_factory=list)  # known keys polyclap does not use


def _clap_config(path: str | os.PathLike[str]):
    config = load_hf_config(path)
    if config.model_type != "clap":
        raise HFLoadError(
            f"{path}: not a transformers ClapModel directory (model_type {config.model_type!r})"
        )
    if config.audio_config.enable_fusion:
        raise HFLoadError(f"{path}: fused CLAP checkpoints (enable_fusion=true) are not supported")
    return config


def clap_model_config(path: str | os.PathLike[str], max_text_len: int = 77) -> ModelConfig:
    """The polyclap :class:`ModelConfig` of a ClapModel directory (features.preset=htsat)."""
    config = _clap_config(path)
    text = config.text_config
    drop = float(text.hidden_dropout_prob)
    return ModelConfig(
        audio=AudioEncoderConfig(
            kind="htsat",
            path=str(path),
            max_frames=1001,
            dropout=float(config.audio_config.hidden_dropout_prob),
        ),
        text=TextEncoderConfig(
            kind="hf",
            path=str(path),
            pooling="pooler",
            dropout=drop,
            max_len=min(max_text_len, int(text.max_position_embeddings) - 2),
        ),
        embed_dim=int(config.projection_dim),
        projection="mlp",
        init_temperature=1.0 / float(config.logit_scale_init_value),
    )


def clap_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """The directory's weights under polyclap names, plus (unexpected, dropped) keys."""
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("model*.safetensors"))
    if not files:
        raise HFLoadError(f"{path}: no model*.safetensors (pickled weights are not imported)")
    out: dict[str, Tensor] = {}
    unexpected: list[str] = []
    dropped: list[str] = []
    for f in files:
        for key, value in load_file(str(f)).items():
            if key == "logit_scale_a":
                out["log_scale"] = value.reshape(1)
            elif key in DROPPED:
                dropped.append(key)
            else:
                prefix = next((p for p in PREFIXES if key.startswith(p)), None)
                if prefix is None:
                    unexpected.append(key)
                else:
                    out[PREFIXES[prefix] + key[len(prefix) :]] = value
    return out, unexpected, dropped


def import_clap(
    path: str | os.PathLike[str], n_mels: int = 64, strict: bool = True
) -> tuple[CLAP, ImportReport]:
    """Build the polyclap model of a ClapModel directory with all of its weights.

    ``strict``: any polyclap parameter the directory lacks, or any directory weight that has no
    polyclap home, is an :class:`HFLoadError` listing them."""
    model = build_model(clap_model_config(path), n_mels)
    state, unexpected, dropped = clap_state_dict(path)
    result = model.load_state_dict(state, strict=False)
    report = ImportReport(
        sorted(result.missing_keys), sorted(unexpected + list(result.unexpected_keys)), dropped
    )
    if strict and (report.missing or report.unexpected):
        raise HFLoadError(
            f"{path}: ClapModel import does not match polyclap: missing "
            f"{report.missing[:10]}, unexpected {report.unexpected[:10]}"
        )
    return model, report
