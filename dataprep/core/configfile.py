"""The ONE configuration loader: a YAML/JSON file + ``section.key=value`` overrides -> a typed
config, with one error formatter (the file, the key, what is wrong, or what a removed key became)
and the key reference that entry scripts print in ``--help``.

The schemas are elsewhere: the data side's sections in :mod:`dataprep.core.config`, the whole
experiment in ``model.config.ExperimentConfig`` (loaded through this same function).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from dataprep.core.config import DataConfig
from dataprep.core.section import ConfigError


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML scalars (``3``, ``true``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        _set_path(tree, key.strip(), yaml.safe_load(raw) if raw else "")
    return tree


def _format_validation_error(
    err: ValidationError, source: str, removed: dict[str, str] | None = None
) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        pattern = ".".join("*" if isinstance(p, int) else str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden" and removed and pattern in removed:
            lines.append(f"  key {loc!r} is no longer accepted: {removed[pattern]}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"  unknown key {loc!r}")
        else:
            lines.append(f"  {loc}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(
    path: str | os.PathLike[str] | None,
    overrides: list[str] | tuple[str, ...] = (),
    cls: type[BaseModel] = DataConfig,
) -> Any:
    """Load a YAML (or JSON) file into ``cls``; relative ``root``/``out`` paths stay as written.

    ``cls`` is the view to validate: :class:`DataConfig` for a data-only file, or
    ``model.config.ExperimentConfig`` for a whole experiment file (``model.config.load_config``
    defaults to it). Raises :class:`ConfigError` naming the file and the offending key.
    """
    tree: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        source = str(p)
        text = p.read_text(encoding="utf-8")
        try:
            # JSON exactly as JSON (exports write config.json); YAML 1.1 would read 1e-06 as text
            loaded = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as err:
            raise ConfigError(
                f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {err}"
            ) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping, got {type(loaded).__name__}")
        tree = loaded
    tree = apply_overrides(tree, overrides)
    try:
        return cls.model_validate(tree)
    except ValidationError as err:
        removed = getattr(cls, "removed_keys", None)
        raise ConfigError(_format_validation_error(err, source, removed)) from None


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def _type_name(ann: Any) -> str:
    if get_origin(ann) is Literal:
        return " | ".join(repr(a) for a in get_args(ann))
    if isinstance(ann, type):
        return ann.__name__
    return str(ann).replace("typing.", "").replace("model.config.", "")


def config_reference(cls: type[BaseModel], sections: tuple[str, ...] | None = None) -> str:
    """Every key of ``cls`` (or of its top-level ``sections``) as ``section.key: type = default``
    lines, nested sections expanded: the reference entry scripts print in ``--help``."""
    lines: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            key = f"{prefix}{name}"
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, key + ".")
                continue
            default = info.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = default.model_dump(mode="json")
            lines.append(f"  {key}: {_type_name(ann)} = {default!r}")

    for name, info in cls.model_fields.items():
        ann = info.annotation
        if (
            (sections is None or name in sections)
            and isinstance(ann, type)
            and issubclass(ann, BaseModel)
        ):
            walk(ann, name + ".")
    return "\n".join(lines)
