"""Model weights I/O: the fp32 export and every load for evaluation, inference and init.

No path here unpickles. An export directory (``<run>/final`` or ``jobs/export.py``'s output) is::

    model.safetensors   fp32 state dict (safetensors: a header plus raw tensors)
    config.json         the ExperimentConfig that built the model (read by the one loader)
    tokenizer.model     our sentencepiece model, when the text tower uses it
    towers/audio|text   a transformers tower's config, tokenizer and preprocessor files (no
                        weights: those are in model.safetensors), used instead of the tower
                        directory the run was trained from
    meta.json           step, world size, ZeRO stage, precision, source checkpoint

DeepSpeed checkpoint directories are read with ``torch.load(weights_only=True)``: its
model-states files hold only tensors and containers; its ZeRO optimizer partitions also hold
three small DeepSpeed types, allow-listed by name in :data:`DEEPSPEED_SAFE_GLOBALS` (anything
else is refused with its name). DeepSpeed's own ZeRO consolidation (``zero_to_fp32``) is used,
with its ``torch.load`` forced to ``weights_only=True``. A checkpoint directory must also carry
this project's marker with matching checksums (``model.checkpoint.verify_checkpoint``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from safetensors.torch import load_file, save_file

from dataprep.core import storage
from dataprep.core.atomic import atomic_write_json
from model.checkpoint import (
    CHECKPOINTS,
    COMPLETE,
    CONFIG,
    FINAL,
    TOKENIZER,
    config_json,
    latest_checkpoint,
    verify_checkpoint,
)
from model.sync import pull, push_dir, sync_target

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
META = "meta.json"
# What DeepSpeed 0.19's ZeRO optimizer partitions pickle besides tensors and containers
# (found with torch.serialization.get_unsafe_globals_in_checkpoint on ZeRO 1/2/3, fp32 and bf16).
DEEPSPEED_SAFE_GLOBALS = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


def _safe_globals() -> list[Any]:
    import importlib

    out = []
    for name in DEEPSPEED_SAFE_GLOBALS:
        module, _, attr = name.rpartition(".")
        out.append(getattr(importlib.import_module(module), attr))
    return out


class _WeightsOnlyTorch:
    """``torch`` as seen by ``deepspeed.utils.zero_to_fp32``: ``load`` is always weights-only."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return torch.load(*args, **kwargs)


@contextlib.contextmanager
def _weights_only_deepspeed() -> Iterator[None]:
    from deepspeed.utils import zero_to_fp32

    with (
        torch.serialization.safe_globals(_safe_globals()),
        mock.patch.object(zero_to_fp32, "torch", _WeightsOnlyTorch()),
    ):
        yield


def consolidated_state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    """Full fp32 model weights from one DeepSpeed checkpoint directory (any ZeRO stage),
    after :func:`verify_checkpoint`, without unpickling anything but allow-listed types."""
    verify_checkpoint(ckpt)
    try:
        with _weights_only_deepspeed():
            if any(ckpt.glob("*_optim_states.pt")):
                # ZeRO 1/2/3 (and bf16): the fp32 master weights live in the optimizer partitions
                from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

                sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
            else:
                states = torch.load(
                    ckpt / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True
                )
                sd = states["module"]
    except Exception as err:  # an UnpicklingError names the refused global
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise ValueError(
                f"{ckpt}: refusing to unpickle DeepSpeed files with types beyond "
                f"{DEEPSPEED_SAFE_GLOBALS}: {str(err).splitlines()[0]}"
            ) from None
        raise
    return {
        k: (v.float() if v.is_floating_point() else v).contiguous().clone() for k, v in sd.items()
    }


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def write_export(
    dest: Path,
    state_dict: dict[str, torch.Tensor],
    cfg: Any,
    *,
    tokenizer: Path | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write an export directory at ``dest`` atomically (a sibling temp dir, then rename)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        save_file(
            {k: v.contiguous() for k, v in state_dict.items()},
            str(tmp / WEIGHTS),
            metadata={"format": "pt"},
        )
        (tmp / CONFIG).write_bytes(config_json(cfg))
        _copy_towers(cfg, tmp)
        if tokenizer is not None and Path(tokenizer).is_file():
            shutil.copyfile(tokenizer, tmp / TOKENIZER)
        atomic_write_json(tmp / META, meta or {})
        from model.card import write_model_card  # every export carries its model card

        write_model_card(tmp, cfg, run_dir=dest.parent)
        if dest.exists():
            old = dest.parent / f".{dest.name}-old-{os.getpid()}"
            os.replace(dest, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported fp32 weights to %s", dest)
    return dest


TOWERS = "towers"  # <export>/towers/{audio,text}: the transformers towers' files, no weights


def _copy_towers(cfg: Any, dest: Path) -> None:
    """A transformers tower is rebuilt from its directory's config and tokenizer: copy those
    into the export so it does not depend on the directory it was trained from."""
    from model.hf_common import copy_tower_files

    for name, tower in (("audio", cfg.model.audio), ("text", cfg.model.text)):
        hf = tower.kind not in ("patch", "transformer", "minilm")
        if hf and tower.path and Path(tower.path).is_dir():
            copy_tower_files(tower.path, dest / TOWERS / name)


def _with_export_towers(cfg: Any, d: Path) -> Any:
    """Point the towers of an export's config at the export's own copies (``towers/``)."""
    model = cfg.model
    for name in ("audio", "text"):
        if (d / TOWERS / name / "config.json").is_file():
            sub = getattr(model, name).model_copy(update={"path": str(d / TOWERS / name)})
            model = model.model_copy(update={name: sub})
    return cfg.model_copy(update={"model": model})


def export_checkpoint(ckpt: Path, dest: Path, meta: dict[str, Any] | None = None) -> Path:
    """A DeepSpeed checkpoint directory (verified) -> an export directory at ``dest``."""
    from model.config import load_config

    sd = consolidated_state_dict(ckpt)
    cfg = load_config(ckpt / CONFIG)
    tok = ckpt / TOKENIZER
    return write_export(
        dest,
        sd,
        cfg,
        tokenizer=tok if tok.is_file() else None,
        meta={**(meta or {}), "source_checkpoint": str(ckpt)},
    )


def export_final(out: Path, ckpt: Path, meta: dict[str, Any]) -> Path:
    """Rank 0 at the end of training: ``<out>/final`` from the run's last checkpoint, then
    copied to ``<train.sync_to>/final`` when set (a failed upload raises: the run's product did
    not reach where the config sends it)."""
    dest = export_checkpoint(ckpt, out / FINAL, meta)
    sync_to = sync_target(json.loads((ckpt / CONFIG).read_text()))
    if sync_to:
        push_dir(dest, str(storage.join(sync_to, FINAL)))
    return dest


# --------------------------------------------------------------------------------------------
# Load (evaluation, inference, init from weights)
# --------------------------------------------------------------------------------------------


def resolve(path: Path) -> Path:
    """An export directory or a checkpoint directory, from any of: an export, a run directory
    (its ``final/``, else its latest checkpoint), a ``checkpoints/`` directory, a checkpoint."""
    if (path / WEIGHTS).is_file() or (path / COMPLETE).is_file():
        return path
    if (path / FINAL / WEIGHTS).is_file():
        return path / FINAL
    if (path / "model.pt").is_file():
        raise ValueError(
            f"{path}/model.pt is a torch pickle (an export from before safetensors): it is not "
            f"loaded, since unpickling can run code; re-export the run's checkpoint with "
            f"`python jobs/export.py --checkpoint RUN_DIR --out DIR`"
        )
    run = path.parent if path.name == CHECKPOINTS else path
    ckpt = latest_checkpoint(run)
    if ckpt is not None:
        return ckpt
    raise FileNotFoundError(
        f"{path}: no model here (expected an export with {WEIGHTS}, a run directory with "
        f"final/ or {CHECKPOINTS}/, or a checkpoint directory with {COMPLETE})"
    )


def load_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], Path]:
    """``(fp32 state dict, the resolved directory)``; safetensors or weights-only loads only.
    An ``s3://``/``gs://`` path is a synced export (``model.sync.pull``: cached, checked)."""
    d = resolve(pull(str(path)) if storage.is_remote(path) else Path(path))
    sd = load_file(str(d / WEIGHTS)) if (d / WEIGHTS).is_file() else consolidated_state_dict(d)
    return sd, d


def _config_of(d: Path) -> Any:
    from dataprep.core.config import ConfigError
    from model.config import ExperimentConfig, load_config

    try:
        return _with_export_towers(load_config(d / CONFIG), d)
    except ConfigError as err:
        # An export outlives schema changes in sections evaluation does not use (build.*):
        # keep what defines the model and its inputs, and say what was dropped.
        tree = json.loads((d / CONFIG).read_text())
        kept = {k: tree[k] for k in ("name", "features", "model") if k in tree}
        log.warning(
            "%s: loaded only features/model sections (%s)",
            d / CONFIG,
            str(err).splitlines()[-1].strip(),
        )
        return _with_export_towers(ExperimentConfig.model_validate(kept), d)


def load_for_eval(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[Any, Any, Any]:
    """``(model in eval mode, ExperimentConfig, tokenizer)`` from an export or a checkpoint.

    The tokenizer has ``encode_batch(texts, max_len) -> (ids, mask)`` whatever the text tower
    (``model.tokenizer.load_tokenizer``).
    """
    from model.clap import build_model
    from model.tokenizer import load_tokenizer

    sd, d = load_state_dict(path)
    cfg = _config_of(d)
    model = build_model(cfg.model, cfg.features.n_mels)
    model.load_state_dict(sd, strict=True)
    model.to(device).eval()
    tok = load_tokenizer(cfg.model.text, d / TOKENIZER)
    return model, cfg, tok
