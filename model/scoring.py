"""The CLAP scorer the shard build's curation runs (``build.curation``, dataprep/curation.py).

``dataprep`` never imports ``model``: the entry script (pipelines/build_shards.py) builds a
:class:`ClapScorerFactory` from the typed config and injects it; the build's executor calls it
once inside each scorer actor (a Ray actor: the model is loaded once per worker) and sends it
batches. The score of a pair is the cosine of the L2-normalized audio and text embeddings of
:class:`model.CLAP` (a polyclap export or an imported transformers ``ClapModel`` directory,
each with its own preprocessing: the build's waveform is resampled to the model's rate).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dataprep.core.config import ConfigError
from model.api import CLAP
from model.inference import ModelDirError


class ClapPairScorer:
    """``(waves at sample_rate, per wave its texts) -> per wave one cosine per text``; an audio
    the model cannot embed scores NaN for all its texts (the build rejects it, reasoned)."""

    def __init__(self, clap: CLAP) -> None:
        self.clap = clap

    def __call__(
        self, waves: list[np.ndarray], sample_rate: int, texts: list[list[str]]
    ) -> list[list[float]]:
        if not waves:
            return []
        # copies: arrays from Ray's object store are read-only, torch wants writable ones
        audio = self.clap.embed_audio([np.array(w) for w in waves], sample_rate=sample_rate)
        flat = [t for ts in texts for t in ts]
        text = self.clap.embed_text(flat) if flat else np.zeros((0, audio.shape[1]), np.float32)
        out: list[list[float]] = []
        i = 0
        for a, ts in zip(audio, texts):
            cos = text[i : i + len(ts)] @ a
            out.append([float(c) for c in cos])
            i += len(ts)
        return out


@dataclass(frozen=True)
class ClapScorerFactory:
    """Picklable: what a scorer actor needs to load the model itself (``build.curation``)."""

    model_dir: str
    device: str = "cpu"
    batch_size: int = 16

    def __call__(self) -> ClapPairScorer:
        clap = CLAP.from_pretrained(
            self.model_dir, device=self.device, batch_size=self.batch_size, progress=False
        )
        return ClapPairScorer(clap)

    @classmethod
    def from_config(cls, curation: Any) -> ClapScorerFactory:
        return cls(str(curation.model), curation.device, curation.batch_size)


def checked_factory(curation: Any) -> ClapScorerFactory | None:
    """The factory for ``build.curation`` (None when it is off), checked by loading the model
    once here on CPU, so a bad directory is one :class:`ConfigError` line (the entry scripts
    exit 2) before Ray starts or anything is written."""
    if not curation:
        return None
    if not Path(curation.model).is_dir():
        raise ConfigError(f"build.curation.model={curation.model}: not a local model directory")
    factory = ClapScorerFactory.from_config(curation)
    try:
        dataclasses.replace(factory, device="cpu")()
    except (ModelDirError, OSError, ValueError, KeyError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            f"build.curation.model={curation.model}: not a polyclap export or a transformers "
            f"ClapModel directory ({msg})"
        ) from None
    return factory
