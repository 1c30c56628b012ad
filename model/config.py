"""Typed model and training configuration (sections ``model:`` and ``train:`` of the YAML).

The mel parameters are NOT here: the audio encoder reads ``n_mels`` from the feature config
(``dataprep.core.config.FeatureConfig``), which is fingerprinted and shared with the data pipeline.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    local_window: int | None = None  # MGA-CLAP locality-aware attention window (patches)
    specaugment: SpecAugmentConfig | None = SpecAugmentConfig()

    @model_validator(mode="after")
    def _hf_needs_path(self) -> AudioEncoderConfig:
        if self.kind != "patch" and not self.path:
            raise ValueError(f"audio.kind={self.kind} needs audio.path (a local model directory)")
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
        return self


class LossConfig(_Section):
    kind: Literal["infonce", "mga"] = "infonce"
    label_smoothing: float = 0.0
    mask_same_group: bool = True  # two views / captions of one clip are not negatives
    mask_same_label: bool = False
    hard_negative_beta: float = 0.0  # MGA-CLAP hard-negative weighting strength (0: off)
    codebook_size: int = 0  # MGA-CLAP shared codebook (0: off)
    codebook_weight: float = 0.1


class ModelConfig(_Section):
    audio: AudioEncoderConfig = AudioEncoderConfig()
    text: TextEncoderConfig = TextEncoderConfig()
    embed_dim: int = 256
    # linear: one bias-free Linear per tower; mlp: LAION-CLAP's Linear-ReLU-Linear (with biases)
    projection: Literal["linear", "mlp"] = "linear"
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    loss: LossConfig = LossConfig()


class TrainConfig(_Section):
    shards: str = "outputs/shards"  # shard set root (holds train/ and val/)
    out: str = "outputs/run"
    tokenizer: str | None = None  # sentencepiece .model (default: <shards>/tokenizer.model)
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
    num_workers: int = 0
    save_every: int = 100
    keep_last: int = 2
    log_every: int = 10
    eval_every: int = 0  # 0: validation only at the end
    max_text_len: int = 64
    ds_config: dict[str, Any] = Field(default_factory=dict)  # raw DeepSpeed overrides
    # --- loader / trainer additions (issue 8); defaults keep earlier configs valid ---
    shuffle_buffer: int = 256  # per-worker shuffle buffer (samples)
    bucket_by_length: bool = False  # batch similar lengths, pad to the batch max (not max_frames)
    no_decay: tuple[str, ...] = ("logit_scale", "pos", "cls", "norm", "bias")  # + all 1-D params
    tensorboard: bool = True
    val_batches: int = 0  # per rank for the periodic validation (0: the whole val split)
