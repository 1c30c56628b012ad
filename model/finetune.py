"""Fine-tuning controls: weights-only init, tower locks (LiT), optimizer groups, layer-wise LR
decay.

- :func:`init_weights` — ``model.init_from=DIR``: a polyclap export / run / checkpoint directory
  or a transformers ``ClapModel`` directory. Weights only (no optimizer, step or RNG state),
  strict by default: every missing, unexpected or shape-mismatched key is listed in one
  :class:`InitError` line. Nothing is unpickled (``torch.load(weights_only=True)`` or
  safetensors).
- :func:`apply_locks` — ``train.finetune.<tower>.lock``: the tower's parameters stop requiring
  grad and its modules stay in eval mode (no dropout noise in what does not learn);
  ``unlocked_layers: N`` keeps the last N layers and everything after them (final norm,
  pooler) trainable, LiT-style partial unlocking.
- :func:`param_groups` — one group per (lr, weight decay): towers and the head (projections,
  temperature, codebook) get their own ``lr`` / ``weight_decay``; ``layer_decay`` scales a
  tower's layer ``i`` of ``L`` (1-based; embeddings are 0, the final norm / pooler ``L + 1``) by
  ``layer_decay ** (L + 1 - i)`` (BEiT's layer-wise LR decay). 1-D parameters and names in
  ``train.no_decay`` are never decayed. The DeepSpeed WarmupCosineLR schedule scales each
  group's own lr, so the ratios hold through warmup and decay.

A tower's "layers" are its repeated blocks, found by :func:`tower_layers`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# Attribute path of the block list, per tower implementation (first that exists wins).
LAYER_PATHS = (
    "blocks",  # AudioEncoder, TransformerText
    "bert.encoder.layer",  # MiniLMText
    "model.audio_encoder.layers",  # HTSATAudio: the 4 Swin stages
    "model.encoder.layer",  # HFText (BERT/RoBERTa/XLM-R/CLAP text), ASTAudio
    "model.h",  # HFText (GPT-2)
    "model.layers",  # HFText (Llama/Qwen), WhisperAudio
)


class InitError(ValueError):
    """``model.init_from`` cannot initialise this model (one line: what and where)."""


def towers(model: nn.Module) -> dict[str, nn.Module]:
    """The tower modules of a :class:`model.clap.CLAP` (the text tower's implementation)."""
    return {"audio": model.audio, "text": model.text.impl}


def _get(module: nn.Module, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def tower_layers(tower: nn.Module) -> list[nn.Module]:
    for path in LAYER_PATHS:
        layers = _get(tower, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return list(layers)
    raise ValueError(f"no layer list found in {type(tower).__name__} (looked for {LAYER_PATHS})")


def layer_depths(tower: nn.Module) -> tuple[dict[str, int], int]:
    """``{param name (within the tower): depth}`` and ``L``: 0 for parameters registered before
    the first layer (embeddings), ``i`` for layer ``i`` (1-based), ``L + 1`` after the last."""
    layers = tower_layers(tower)
    owner = {id(p): i + 1 for i, layer in enumerate(layers) for p in layer.parameters()}
    depths: dict[str, int] = {}
    seen_layer = False
    for name, p in tower.named_parameters():
        d = owner.get(id(p))
        if d is not None:
            seen_layer = True
        depths[name] = d if d is not None else (len(layers) + 1 if seen_layer else 0)
    return depths, len(layers)


# ------------------------------------------------------------------------------------- locks
def apply_locks(model: nn.Module, ft: Any) -> dict[str, int]:
    """Freeze what ``ft`` (:class:`model.config.FinetuneConfig`) locks; returns the number of
    frozen parameters per tower. Frozen modules are registered on the model
    (``frozen_modules``) so that ``CLAP.train()`` keeps them in eval mode."""
    frozen_counts: dict[str, int] = {}
    frozen_modules: list[nn.Module] = list(getattr(model, "frozen_modules", []))
    for name, tower in towers(model).items():
        tcfg = getattr(ft, name)
        if not tcfg.lock:
            continue
        if tcfg.unlocked_layers == 0:
            frozen = list(tower.parameters())
            frozen_modules.append(tower)
        else:
            depths, n_layers = layer_depths(tower)
            if tcfg.unlocked_layers > n_layers:
                raise ValueError(
                    f"train.finetune.{name}.unlocked_layers={tcfg.unlocked_layers} "
                    f"but the {name} tower has {n_layers} layers"
                )
            first_trainable = n_layers - tcfg.unlocked_layers + 1
            params = dict(tower.named_parameters())
            frozen = [params[n] for n, d in depths.items() if d < first_trainable]
            frozen_modules += tower_layers(tower)[: first_trainable - 1]
        for p in frozen:
            p.requires_grad_(False)
        frozen_counts[name] = sum(p.numel() for p in frozen)
    model.frozen_modules = frozen_modules
    model.train(model.training)  # apply eval mode to the frozen modules now
    log.info("locked parameters per tower: %s", frozen_counts)
    return frozen_counts


# ------------------------------------------------------------------------------ param groups
def _decayed(name: str, p: nn.Parameter, no_decay: tuple[str, ...]) -> bool:
    parts = name.lower().split(".")
    return not (p.ndim < 2 or any(s in part for s in no_decay for part in parts))


def param_groups(model: nn.Module, t: Any) -> list[dict[str, Any]]:
    """Optimizer groups for a CLAP under ``t`` (:class:`model.config.TrainConfig`, its
    ``finetune`` section); trainable parameters only, each exactly once."""
    ft = t.finetune
    plan: dict[int, tuple[float, float]] = {}  # id(param) -> (lr, wd)
    for name, tower in towers(model).items():
        tcfg = getattr(ft, name)
        lr = tcfg.lr if tcfg.lr is not None else t.lr
        wd = tcfg.weight_decay if tcfg.weight_decay is not None else t.weight_decay
        scales = {pname: 1.0 for pname, _ in tower.named_parameters()}
        if tcfg.layer_decay != 1.0:
            depths, n_layers = layer_depths(tower)
            scales = {n: tcfg.layer_decay ** (n_layers + 1 - d) for n, d in depths.items()}
        for pname, p in tower.named_parameters():
            plan[id(p)] = (lr * scales[pname], wd if _decayed(pname, p, t.no_decay) else 0.0)
    head_lr = ft.head_lr if ft.head_lr is not None else t.lr
    head_wd = ft.head_weight_decay if ft.head_weight_decay is not None else t.weight_decay
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = plan.get(id(p)) or (head_lr, head_wd if _decayed(name, p, t.no_decay) else 0.0)
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


# -------------------------------------------------------------------------------------- init
@dataclass
class InitReport:
    source: str
    kind: str  # "polyclap" | "clap"
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)


def _source_state(path: Path) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """(state dict under polyclap names, keys with no polyclap home, kind) of ``path``."""
    from model.inference import transformers_model_type

    # a polyclap export has a config.json too (the ExperimentConfig, no ``model_type``)
    if transformers_model_type(path) is not None:
        from model.hf_common import HFLoadError
        from model.hf_import import clap_state_dict

        try:
            state, unexpected, _dropped = clap_state_dict(path)
        except HFLoadError as err:
            raise InitError(str(err)) from None
        return state, unexpected, "clap"
    from model.weights import load_state_dict

    try:  # safetensors, or a verified checkpoint read weights-only (model.weights)
        state, _ = load_state_dict(path)
    except (FileNotFoundError, ValueError) as err:
        raise InitError(f"model.init_from: {err}") from None
    return state, [], "polyclap"


def init_weights(model: nn.Module, path: str | os.PathLike[str], strict: bool = True) -> InitReport:
    """Copy the weights of ``path`` into ``model`` (see module docstring)."""
    p = Path(path)
    if not p.is_dir():
        raise InitError(f"model.init_from={p}: not a directory")
    state, unexpected, kind = _source_state(p)
    own = model.state_dict()
    report = InitReport(str(p), kind, unexpected=sorted(unexpected))
    report.missing = sorted(k for k in own if k not in state)
    report.unexpected += sorted(k for k in state if k not in own)
    report.mismatched = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    )
    if report.mismatched or (strict and (report.missing or report.unexpected)):
        raise InitError(
            f"model.init_from={p} ({kind}) does not fit this model: "
            f"missing {report.missing[:8]} ({len(report.missing)}), "
            f"unexpected {report.unexpected[:8]} ({len(report.unexpected)}), "
            f"shape-mismatched {report.mismatched[:8]}"
            + ("" if report.mismatched else "; model.init_strict=false loads the rest")
        )
    usable = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    log.info(
        "init_from %s (%s): %d tensors loaded, %d missing, %d unexpected",
        p,
        kind,
        report.loaded,
        len(report.missing),
        len(report.unexpected),
    )
    return report
