"""Typed model and training configuration, and the whole experiment file.

Sections ``model:``, ``tokenizer:`` and ``train:`` live here; :class:`ExperimentConfig` is the
data side's :class:`dataprep.core.config.DataConfig` (``features``, ``build``, ``loader``) plus
those three, loaded through the one loader :func:`load_config` (same error formatter).

The mel parameters are NOT here: the audio encoder reads ``n_mels`` from the feature config
(``dataprep.core.config.FeatureConfig``), which is fingerprinted and shared with the data pipeline.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from dataprep.core.config import DataConfig, Section
from dataprep.core.configfile import load_config as _load_config

_Section = Section
log = logging.getLogger(__name__)


class SpecAugmentConfig(_Section):
    freq_mask: int = 8  # max width of one frequency mask (mel bins)
    time_mask: int = 20  # max width of one time mask (frames)
    num_freq_masks: int = 2
    num_time_masks: int = 2


class AudioEncoderConfig(_Section):
    # patch: the project's patch transformer (fields below). htsat | whisper | ast: a transformers
    # tower from the local directory ``path`` (model.hf_audio); it reads features.preset of the
    # same name, ``dropout`` overrides its checkpoint's dropout, the patch fields are unused.
    kind: Literal["patch", "htsat", "whisper", "ast"] = "patch"
    path: str | None = None
    dim: int = 192
    depth: int = 4
    heads: int = 3
    mlp_ratio: float = 4.0
    patch_freq: int = 16  # patch height in mel bins (= n_mels for CALM-style time patches)
    patch_time: int = 16  # patch width in frames
    positions: Literal["learned", "sinusoidal"] = "learned"
    max_frames: int = 1024  # crop/pad length in frames at train time
    dropout: float = 0.1
    pooling: Literal["cls", "attentive", "mean"] = "cls"
    multirate: tuple[int, ...] = ()  # extra pooling rates in patches (CALM multirate pooling)
    # banded attention: the LAST block attends only within +-band_window time patches (None: off)
    band_window: int | None = Field(None, ge=0)
    # MGA-CLAP's locality-aware block: the frame features (frame_similarity, the codebook) leave
    # the last N blocks through a parallel value-only path (no attention mixing, no MLP); 0: off,
    # frames are the main path's tokens. The clip embedding always takes the main path.
    locality_blocks: int = Field(0, ge=0)
    specaugment: SpecAugmentConfig | None = SpecAugmentConfig()

    @model_validator(mode="before")
    @classmethod
    def _renamed_local_window(cls, data: Any) -> Any:
        # Exports written before the rename carry ``local_window``: it was always banded
        # attention, never MGA-CLAP's locality-aware block, so it now has that name.
        if isinstance(data, dict) and "local_window" in data:
            data = dict(data)
            value = data.pop("local_window")
            if value is not None:
                log.warning("model.audio.local_window is now model.audio.band_window")
            data.setdefault("band_window", value)
        return data

    @model_validator(mode="after")
    def _hf_needs_path(self) -> AudioEncoderConfig:
        if self.kind != "patch" and not self.path:
            raise ValueError(f"audio.kind={self.kind} needs audio.path (a local model directory)")
        for key in ("locality_blocks", "band_window"):
            if getattr(self, key) and self.kind != "patch":
                raise ValueError(f"audio.{key} needs audio.kind=patch, not {self.kind}")
        if self.locality_blocks > self.depth:
            raise ValueError(
                f"audio.locality_blocks={self.locality_blocks} exceeds audio.depth={self.depth}"
            )
        return self


class TextEncoderConfig(_Section):
    # transformer: ours over sentencepiece ids; minilm: the packaged all-MiniLM-L6-v2;
    # hf: a transformers text model from the local directory ``path`` with its own tokenizer
    # (model.hf_text); pooling there defaults to the model's kind (cls, or last for GPT-2-like).
    kind: Literal["transformer", "minilm", "hf"] = "transformer"
    path: str | None = None
    vocab_size: int = 4000
    dim: int = 192
    depth: int = 4
    heads: int = 3
    mlp_ratio: float = 4.0
    max_len: int = 64
    dropout: float = 0.1
    pooling: Literal["cls", "mean", "pooler", "last", "auto"] = "mean"
    freeze: bool = False  # for kind=minilm|hf: keep the pretrained text tower frozen
    # False: no text projection — the audio tower is aligned INTO the text tower's space
    # (CALM with a frozen MiniLM); needs model.embed_dim == the text width (384 for MiniLM).
    project: bool = True
    # a <lang:xx> token after bos of every text with a known language (CLARA); kind=transformer
    # only (model.tokenizer: the sentencepiece model holds one piece per language)
    lang_tags: bool = False

    @model_validator(mode="before")
    @classmethod
    def _hf_pooling_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "hf" and "pooling" not in data:
            data = {**data, "pooling": "auto"}
        return data

    @model_validator(mode="after")
    def _check_kind(self) -> TextEncoderConfig:
        if self.kind == "hf" and not self.path:
            raise ValueError("text.kind=hf needs text.path (a local model directory)")
        if self.kind != "hf" and self.pooling not in ("cls", "mean"):
            raise ValueError(f"text.pooling={self.pooling} needs text.kind=hf")
        if self.lang_tags and self.kind != "transformer":
            # a pretrained tower's vocabulary and embedding matrix are its own: new tokens would
            # start as random rows the locked/low-lr tower never learns; not supported
            raise ValueError(
                f"text.lang_tags needs text.kind=transformer (a {self.kind} tower keeps its own "
                f"pretrained vocabulary; language tags are not added to it)"
            )
        return self


class TowerTuneConfig(_Section):
    """Fine-tuning of one tower (``train.finetune.audio`` / ``.text``); see model.finetune."""

    lock: bool = False  # freeze the tower (LiT): its weights get no gradient, it runs in eval mode
    unlocked_layers: int = Field(0, ge=0)  # with lock: the last N layers (+ final norm) train
    lr: float | None = None  # this tower's peak learning rate (None: train.lr)
    weight_decay: float | None = None  # None: train.weight_decay
    layer_decay: float = Field(1.0, gt=0.0, le=1.0)  # layer i of L: lr * layer_decay**(L + 1 - i)


class FinetuneConfig(_Section):
    """Optimizer groups and locks for starting from pretrained towers (``train.finetune``).

    Parameters outside both towers (projections, temperature, codebook) are the "head": new
    parameters, with their own ``head_lr`` / ``head_weight_decay``."""

    audio: TowerTuneConfig = TowerTuneConfig()
    text: TowerTuneConfig = TowerTuneConfig()
    head_lr: float | None = None
    head_weight_decay: float | None = None


class LossConfig(_Section):
    kind: Literal["infonce", "mga"] = "infonce"
    label_smoothing: float = 0.0
    mask_same_group: bool = True  # two views / captions of one clip are not negatives
    # samples with the same (non-empty) class-label set are not negatives either (ESC-50: two
    # "dog" clips in one batch); needs mask_same_group
    mask_same_label: bool = False
    hard_negative_beta: float = 0.0  # MGA-CLAP hard-negative weighting strength (0: off)
    codebook_size: int = 0  # MGA-CLAP shared codebook (0: off)
    codebook_weight: float = 0.1

    @model_validator(mode="after")
    def _label_mask_needs_group_mask(self) -> LossConfig:
        if self.mask_same_label and not self.mask_same_group:
            raise ValueError(
                "mask_same_label needs mask_same_group: true (labels are masked as groups)"
            )
        return self


class CalmConfig(_Section):
    """CALM's alignment proper (``model.calm``): the audio tower's frame features, projected
    into the input-embedding space of the pretrained text model (``text.kind: hf``), pass
    through that model as its input tokens; the audio embedding is its pooled output (the text
    tower's pooling). Off: the output-space alignment (separate towers).

    ``with_transcript`` (CALM's multimodal transformer, Sachidananda et al. 2022,
    arXiv:2202.03587: "the derived acoustic and lexical tokens representations are input into a
    multimodal transformer"): the acoustic tokens are followed by the token embeddings of the
    sample's transcript, and the language model reads both. The loader feeds a transcript only
    where it cannot leak the paired text (``dataprep.loader.sample.calm_transcript``): on a
    training draw whose text does not derive from the words, a template that does not quote them
    (``a woman speaking German in an angry voice``) or class names (CREMA-D's ``anger``, its
    sentence from ``attributes.transcript``); every other sample (captions, quoting templates,
    the transcript itself, paraphrases, crops, validation) goes through audio alone, so that
    path keeps learning and inference without a transcript stays meaningful."""

    enabled: bool = False
    with_transcript: bool = False

    @model_validator(mode="after")
    def _transcript_needs_calm(self) -> CalmConfig:
        if self.with_transcript and not self.enabled:
            raise ValueError(
                "model.calm.with_transcript needs model.calm.enabled: true (the transcript's "
                "tokens join the acoustic tokens inside the language model)"
            )
        return self


class ModelConfig(_Section):
    audio: AudioEncoderConfig = AudioEncoderConfig()
    text: TextEncoderConfig = TextEncoderConfig()
    embed_dim: int = 256
    # linear: one bias-free Linear per tower; mlp: LAION-CLAP's Linear-ReLU-Linear (with biases)
    projection: Literal["linear", "mlp"] = "linear"
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    loss: LossConfig = LossConfig()
    # Weights-only start (model.finetune.init_weights): a polyclap export/run/checkpoint dir or a
    # transformers ClapModel dir. Strict: every missing or unexpected key is an error.
    init_from: str | None = None
    init_strict: bool = True
    calm: CalmConfig = CalmConfig()

    @model_validator(mode="after")
    def _calm_needs_hf_text(self) -> ModelConfig:
        if self.calm.enabled and self.text.kind != "hf":
            raise ValueError(
                f"model.calm.enabled needs model.text.kind=hf (a pretrained "
                f"language model), not {self.text.kind}"
            )
        return self


class TokenizerConfig(_Section):
    """The text tower's tokenizer (resolved by ``model.tokenizer.tokenizer_path``)."""

    # sentencepiece .model; None: <shards>/tokenizer.model, else one trained on the training
    # texts into <train.out>/tokenizer.model. Only for text.kind=transformer (minilm and hf
    # towers bring their own tokenizer).
    path: str | None = None


class TrainConfig(_Section):
    """The run: output directory, optimizer/schedule, DeepSpeed engine, logging, checkpoints."""

    out: str = "outputs/run"
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload: bool = False
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    micro_batch: int = 16  # samples per rank per optimizer step (the contrastive batch share)
    chunk_size: int | None = None  # gradient-cache chunk (None: plain step)
    grad_accum_steps: int = 1
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 20
    max_steps: int = 200
    time_budget_s: float | None = None
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 100
    keep_last: int = 2
    log_every: int = 10
    eval_every: int = 0  # 0: validation only at the end
    ds_config: dict[str, Any] = Field(default_factory=dict)  # raw DeepSpeed overrides
    no_decay: tuple[str, ...] = ("logit_scale", "pos", "cls", "norm", "bias")  # + all 1-D params
    tensorboard: bool = True
    val_batches: int = 0  # per rank for the periodic validation (0: the whole val split)
    finetune: FinetuneConfig = FinetuneConfig()  # locks, per-tower lr/wd, layer-wise LR decay
    # s3:// or gs:// prefix: every checkpoint and the final export are copied there after each
    # save (model/sync.py: files first, synced.json last); None: local only
    sync_to: str | None = None
    # synced checkpoints the bucket keeps (the newest; None: as many as keep_last; 0: all)
    sync_keep_last: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _sync_to_is_a_bucket(self) -> TrainConfig:
        if self.sync_to is not None:
            from dataprep.core.storage import StorageError, check_writable

            try:
                check_writable(self.sync_to)
            except StorageError as err:
                raise ValueError(f"train.sync_to: {err}") from None
        return self


_MOVED = "moved to {}: the loader's settings live in the loader: section"
_EXPERIMENT_REMOVED = {
    **DataConfig.removed_keys,
    "train.shards": _MOVED.format("loader.shards"),
    "train.num_workers": _MOVED.format("loader.num_workers"),
    "train.shuffle_buffer": _MOVED.format("loader.shuffle_buffer"),
    "train.bucket_by_length": _MOVED.format("loader.bucket_by_length"),
    "train.tokenizer": "moved to tokenizer.path",
    "train.max_text_len": "removed: captions are cut to model.text.max_len tokens (the text "
    "tower's length; the smaller of the two was used)",
    "eval": "removed (it was never read): evaluation tasks live in a task file, "
    "jobs/evaluate.py --tasks configs/tasks/*.yaml",
}


class ExperimentConfig(DataConfig):
    """The whole YAML file: the data sections plus model, tokenizer and training."""

    removed_keys: ClassVar[dict[str, str]] = _EXPERIMENT_REMOVED

    model: ModelConfig = ModelConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _tokenizer_fits_tower(self) -> ExperimentConfig:
        kind = self.model.text.kind
        if self.tokenizer.path is not None and kind != "transformer":
            raise ValueError(
                f"tokenizer.path is set but model.text.kind={kind} uses its own tokenizer "
                "(minilm: the packaged WordPiece; hf: the one in text.path): remove tokenizer.path"
            )
        return self

    @model_validator(mode="after")
    def _features_fit_audio_tower(self) -> ExperimentConfig:
        kind = self.model.audio.kind
        if kind != "patch" and self.features.preset != kind:
            raise ValueError(
                f"model.audio.kind={kind} reads features.preset={kind}, but the features are "
                f"features.preset={self.features.preset}: build the shards with the tower's preset"
            )
        return self


def load_config(
    path: str | os.PathLike[str] | None,
    overrides: list[str] | tuple[str, ...] = (),
    cls: type[BaseModel] = ExperimentConfig,
) -> Any:
    """:func:`dataprep.core.configfile.load_config`, the whole experiment file as default view."""
    return _load_config(path, overrides, cls)
