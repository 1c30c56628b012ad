"""polyclap model library: audio/text encoders, contrastive losses, gradient cache, and the
public inference API ``from model import CLAP`` (``model.api``)."""

from __future__ import annotations

from typing import Any

__all__ = ["CLAP"]


def __getattr__(name: str) -> Any:
    # Lazy: ``import model.config`` (every entry point) must not pull in huggingface_hub/tqdm.
    if name == "CLAP":
        from model.api import CLAP

        return CLAP
    raise AttributeError(f"module 'model' has no attribute {name!r}")
