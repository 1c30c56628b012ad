"""Loading transformers models from a local directory only (shared by the HF towers).

``local_files_only=True`` and ``HF_HUB_OFFLINE=1``: nothing is downloaded at run time. Errors
are one :class:`HFLoadError` line naming what and where (the entry scripts exit 2 on it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

# Config attributes that hold a dropout probability, across the families we load.
DROPOUT_KEYS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "dropout",
    "attention_dropout",
    "activation_dropout",
)


# An export's copy of a tower directory: everything but the weights, which live in the
# export's own model.safetensors (model.weights.write_export). Such a directory builds its
# model from config.json alone; any other directory must carry complete weights.
TOWER_MARKER = "polyclap-tower.json"
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".h5",
    ".msgpack",
    ".ckpt",
    ".onnx",
    ".gguf",
)


def copy_tower_files(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Copy a transformers directory's config, tokenizer and preprocessor files (not its
    weights) to ``dest`` and mark it as an export's tower."""
    import json
    import shutil

    src, dest = Path(src), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f.name != TOWER_MARKER:
            shutil.copyfile(f, dest / f.name)
    (dest / TOWER_MARKER).write_text(
        json.dumps({"copied_from": str(src), "weights": "the export's model.safetensors"}, indent=1)
        + "\n"
    )
    return dest


class HFLoadError(ValueError):
    """A local transformers directory that cannot serve as a tower (one line: what, where)."""


def offline_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_hf_config(path: str | os.PathLike[str]) -> Any:
    """The ``PretrainedConfig`` of a local directory, or :class:`HFLoadError`."""
    offline_env()
    from transformers import AutoConfig

    p = Path(path)
    if not (p / "config.json").is_file():
        raise HFLoadError(f"{p}: not a transformers model directory (no config.json)")
    try:
        return AutoConfig.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise HFLoadError(
            f"{p}: config.json is not a loadable transformers config: {err}"
        ) from None


def load_hf_model(
    path: str | os.PathLike[str],
    config: Any,
    dropout: float | None,
    cls: Any = None,
    part: str = "",
) -> nn.Module:
    """``AutoModel`` (the base model, no LM head) from a local directory. Weights are read
    from ``model.safetensors`` (or a ``.bin`` through transformers' default
    ``torch.load(weights_only=True)``), so nothing arbitrary is unpickled. A missing or
    shape-mismatched weight is an error; ``part`` (a key prefix such as ``text_model.``) limits
    that check to the half of a two-tower checkpoint the caller keeps."""
    offline_env()
    from transformers import AutoModel

    cls = cls or AutoModel
    if dropout is not None:
        for key in DROPOUT_KEYS:
            if hasattr(config, key):
                setattr(config, key, dropout)
    if (Path(path) / TOWER_MARKER).is_file():  # an export's tower: its weights come later
        return AutoModel.from_config(config) if cls is AutoModel else cls(config)
    try:
        model, info = cls.from_pretrained(
            str(path),
            config=config,
            local_files_only=True,
            weights_only=True,
            output_loading_info=True,
        )
    except (OSError, ValueError) as err:
        raise HFLoadError(f"{path}: cannot load the model weights: {err}") from None
    # transformers initialises missing weights at random and only logs it: a tower that
    # silently starts half-random is worse than an error.
    bad = {
        k: sorted(str(x) for x in info.get(k) or () if str(x).startswith(part))
        for k in ("missing_keys", "mismatched_keys")
    }
    if any(bad.values()):
        raise HFLoadError(
            f"{path}: checkpoint does not match {type(model).__name__}: "
            f"missing {bad['missing_keys'][:8]}, "
            f"shape-mismatched {bad['mismatched_keys'][:8]}"
        )
    return model
