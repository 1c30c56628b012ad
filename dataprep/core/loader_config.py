"""The ``loader:`` section and its ``sampling:`` subsection (re-exported by ``config``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from dataprep.core.section import Section


class SamplingConfig(Section):
    """Which samples a training epoch draws (``dataprep.loader.sampling``).

    ``by: none`` reads every sample once per epoch (no weighting). Otherwise the samples are
    grouped by ``lang``, ``corpus`` or ``corpus_lang`` and a group of ``n`` samples is drawn
    with probability ``p ∝ multiplier * n^alpha`` (temperature sampling as in XLM-R and mT5:
    ``alpha = 1`` keeps the data's proportions, smaller values flatten them towards uniform).
    An epoch is ``epoch_samples`` draws (default: the split's sample count); a group's draws go
    through its samples without repeats before any sample is drawn again.
    """

    by: Literal["none", "lang", "corpus", "corpus_lang"] = "none"
    alpha: float = 1.0  # in (0, 1]
    # per-corpus and per-language multipliers of p (open_clip upsampling factors); a name the
    # shards do not contain is an error when the loader opens them
    corpus_weights: dict[str, float] = Field(default_factory=dict)
    lang_weights: dict[str, float] = Field(default_factory=dict)
    epoch_samples: int | None = None  # draws per epoch over all ranks; None: the split's size

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        if not 0.0 < v <= 1.0:
            raise ValueError(f"alpha must be in (0, 1] (1: the data's proportions), got {v}")
        return v

    @field_validator("corpus_weights", "lang_weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: w for k, w in v.items() if not w > 0.0}
        if bad:
            raise ValueError(f"weights must be > 0 (drop the entry to keep a group at 1): {bad}")
        return v

    @field_validator("epoch_samples")
    @classmethod
    def _epoch_samples(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"epoch_samples must be >= 1, got {v}")
        return v

    @model_validator(mode="after")
    def _weighting_needs_groups(self) -> SamplingConfig:
        # by: none reads every sample once: a set alpha, weight or epoch size would be ignored
        if self.by == "none":
            given = {
                "alpha": self.alpha != 1.0,
                "corpus_weights": bool(self.corpus_weights),
                "lang_weights": bool(self.lang_weights),
                "epoch_samples": self.epoch_samples is not None,
            }
            if any(given.values()):
                raise ValueError(
                    f"{', '.join(k for k, on in given.items() if on)} set with by: none (every "
                    f"sample once, no weighting): set by: lang, corpus or corpus_lang"
                )
        return self


class LoaderConfig(Section):
    """The training loader's settings (``dataprep.loader.ShardLoader.from_config``).

    What the model dictates (crop length ``model.audio.max_frames``, padding multiple
    ``model.audio.patch_time``, the tokenizer) is passed in by the training job, not read here.
    """

    shards: str = "outputs/shards"  # shard set root (holds train/ and val/); --shards overrides
    cache_dir: str | None = None  # local copies of checked remote shards (keyed by sha256)
    num_workers: int = 0  # DataLoader worker processes per rank (0: read in the trainer process)
    shuffle_buffer: int = 256  # per-worker shuffle buffer (samples); <= 1: no shuffle buffer
    bucket_by_length: bool = False  # batch similar lengths, pad to the batch max (not max_frames)
    sampling: SamplingConfig = SamplingConfig()  # language/corpus balance of the training draws
