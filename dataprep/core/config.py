"""Typed, validated configuration: YAML file + ``section.key=value`` overrides.

Every section is a frozen pydantic model that forbids unknown keys, so a typo fails before any
work with a message naming the key. One YAML file (e.g. ``configs/demo.yaml``) holds all
sections; each entry point validates the whole file and uses the sections it needs.

This module owns the data side's sections and :class:`DataConfig` (``name``, ``features``,
``build``, ``loader``: what the shard build and the loader read); the ONE loader and its error
formatter are in :mod:`dataprep.core.configfile`. The model layer extends :class:`DataConfig`
into ``model.config.ExperimentConfig`` (adding ``model``, ``tokenizer``, ``train``) and loads it
through the same ``configfile.load_config``; nothing here imports the model layer
(ARCHITECTURE.md).

Keys that were removed or moved are listed in a config class's ``removed_keys``; the error for
such a key names its replacement instead of just "unknown key".
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

# sections kept in their own modules, importable from here as before
from dataprep.core.loader_config import LoaderConfig, SamplingConfig  # noqa: F401
from dataprep.core.section import ConfigError, Section  # noqa: F401  (ConfigError: re-export)
from dataprep.core.storage import WRITABLE

# What each pretrained audio tower's own transformers feature extractor computes (see
# dataprep.core.feature_presets). ``fixed`` fields are the extractor's algorithm and may not be
# changed; ``defaults`` fill fields left unset and may be overridden (a checkpoint's
# preprocessor_config.json may differ: Whisper large-v3 has 128 mel bins, LAION-CLAP uses
# 50-14000 Hz where ClapFeatureExtractor's own default is 0-14000 Hz).
FEATURE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "htsat": {
        "fixed": {
            "sample_rate_hz": 48000,
            "n_fft": 1024,
            "win_length": 1024,
            "hop_length": 480,
            "mel_scale": "slaney",
        },
        "defaults": {"n_mels": 64, "f_min_hz": 50.0, "f_max_hz": 14000.0},
    },
    "whisper": {
        "fixed": {
            "sample_rate_hz": 16000,
            "n_fft": 400,
            "win_length": 400,
            "hop_length": 160,
            "mel_scale": "slaney",
            "f_min_hz": 0.0,
            "f_max_hz": 8000.0,
        },
        "defaults": {"n_mels": 80},
    },
    "ast": {
        "fixed": {
            "sample_rate_hz": 16000,
            "n_fft": 400,
            "win_length": 400,
            "hop_length": 160,
            "mel_scale": "htk",
            "f_min_hz": 20.0,
            "f_max_hz": 8000.0,
        },
        "defaults": {"n_mels": 128},
    },
}


class FeatureConfig(Section):
    """Log-mel parameters. The single source of truth: fingerprinted, never restated.

    ``preset`` other than ``logmel`` selects the exact input of a pretrained audio tower
    (``htsat``: ClapFeatureExtractor with rand_trunc; ``whisper``; ``ast``) and pins the fields
    that algorithm fixes (:data:`FEATURE_PRESETS`); a conflicting explicit value is an error.
    """

    preset: Literal["logmel", "htsat", "whisper", "ast"] = "logmel"
    sample_rate_hz: int = 16000
    n_fft: int = 400  # 25 ms at 16 kHz
    win_length: int = 400
    hop_length: int = 160  # 10 ms
    n_mels: int = 64
    f_min_hz: float = 0.0
    f_max_hz: float = 8000.0
    mel_scale: Literal["htk", "slaney"] = "htk"
    log_offset: float = 1e-6
    dtype: Literal["float16", "float32"] = "float16"

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("preset", "logmel") == "logmel":
            return data
        preset = FEATURE_PRESETS.get(data["preset"])
        if preset is None:
            return data  # the Literal check names the allowed presets
        out = dict(data)
        for key, want in preset["fixed"].items():
            if key in out and out[key] != want:
                raise ValueError(
                    f"features.{key}={out[key]!r} conflicts with "
                    f"features.preset={data['preset']} (which fixes {want!r})"
                )
            out[key] = want
        for key, default in preset["defaults"].items():
            out.setdefault(key, default)
        return out

    @field_validator("f_max_hz")
    @classmethod
    def _nyquist(cls, v: float, info: Any) -> float:
        sr = info.data.get("sample_rate_hz", 16000)
        if v > sr / 2:
            raise ValueError(f"f_max_hz={v} is above Nyquist ({sr / 2}) for sample_rate_hz={sr}")
        return v


class CorpusConfig(Section):
    """One input corpus: which reader parses it, where it lives (any fsspec URI)."""

    name: str
    reader: str
    root: str
    splits: tuple[str, ...] | None = None  # reader-specific subsets (e.g. CV tsv names)
    options: dict[str, Any] = Field(default_factory=dict)  # reader-specific settings
    max_items: int | None = None


class AudioConfig(Section):
    target_lufs: float | None = -23.0  # loudness normalization target (None: peak only)
    peak_limit: float = 0.99
    trim_silence_db: float | None = 40.0  # trim leading/trailing below peak-X dB (None: off)
    max_segment_s: float = 10.0  # longer sound-event recordings are cut into windows
    max_transcript_s: float = 30.0  # a transcript's utterance is never cut: whole up to this
    segment_overlap_s: float = 0.0
    max_segments_per_source: int = 32  # bound per-input memory and output for huge files
    keep_audio: bool = False  # also store normalized audio as flac in the shard


class FilterConfig(Section):
    min_duration_s: float = 0.3
    max_source_duration_s: float = 3600.0
    silence_dbfs: float = -60.0
    max_clip_ratio: float = 0.2  # above: rejected; clipping between the two is kept with a flag
    clip_flag_ratio: float = 0.001
    min_chars_per_s: float = 1.0  # transcript-like texts (filters.is_transcript), not captions
    max_chars_per_s: float = 40.0
    min_text_chars: int = 1
    require_text: bool = True
    lang_mismatch: Literal["reject", "flag", "ignore"] = "flag"


class DedupConfig(Section):
    exact: bool = True
    near: bool = True
    text_near: bool = False
    near_threshold: float = 0.85  # fingerprint similarity for a near-duplicate
    decontaminate: bool = True


class LLMConfig(Section):
    """LLM caption augmentation through an OpenAI-compatible ``/v1/chat/completions`` server.

    ``server``: ``none`` (off), ``embedded`` (the build starts llama.cpp's server on 127.0.0.1
    with ``model_path``, default the packaged SmolLM2 GGUF, and stops it), ``inprocess`` (the
    same GGUF through ``transformers`` in each worker process: no server, nothing to compile;
    what ``make demo`` uses), or ``external`` (``base_url``, e.g. a vLLM server on the
    cluster's GPU nodes).
    """

    server: Literal["none", "embedded", "inprocess", "external"] = "none"
    base_url: str | None = None  # external: "http://host:port" (with or without /v1)
    model: str = "smollm2-135m-instruct"  # the name sent in requests and stored in provenance
    model_path: str | None = None  # embedded/inprocess: GGUF file (None: the packaged one)
    api_key_env: str | None = None  # name of an env var holding a bearer token, never the token
    tasks: tuple[Literal["paraphrase", "caption", "translate"], ...] = ("paraphrase",)
    target_langs: tuple[str, ...] = ()  # "translate": translate the primary text into these
    per_sample: int = 2  # at most this many accepted LLM texts per sample
    temperature: float = 0.7
    max_tokens: int = 96
    concurrency: int = 4  # requests in flight per augmenter
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 0.5  # doubled per retry, with deterministic jitter
    cache_dir: str | None = "outputs/llm_cache"  # None: no cache
    min_chars: int = 8
    max_chars: int = 400
    max_len_ratio: float = 3.0  # output/input length bounds (and its inverse)
    check_language: bool = True
    # Candidates for the language check: lingua over all 75 languages calls short English
    # captions Danish; the languages a build works with are the plausible confusions.
    lid_langs: tuple[str, ...] = (
        "en", "de", "fr", "es", "it", "pt", "nl", "pl", "ru", "zh", "ja", "hi", "ar", "sw", "tr",
    )  # fmt: skip
    semantic_check: bool = True  # all-MiniLM-L6-v2 similarity to the source (English source)
    min_similarity: float = 0.55
    back_translate: bool = True  # verify translations by translating them back (1 more request)
    n_threads: int = 2  # embedded server
    startup_timeout_s: float = 120.0

    def __bool__(self) -> bool:
        # The builder asks ``if acfg.llm`` to decide whether the stage exists at all.
        return self.server != "none"


class AugmentConfig(Section):
    templates: bool = True
    template_langs: tuple[str, ...] = ("en",)
    nlpaug: tuple[str, ...] = ()  # names of nlpaug augmenters to apply
    nlpaug_per_sample: int = 0  # nlpaug texts per sample; 0: one per listed augmenter
    nlpaug_p: float = 0.15  # share of characters/words an nlpaug augmenter touches
    audio_views: int = 0
    # Cheap by default; "pitch_shift", "time_stretch", "mp3" cost 8-17 ms per 3 s clip each.
    audio_transforms: tuple[str, ...] = ("gain", "noise", "speed", "band_pass", "room")
    audio_chain_len: int = 2  # transforms per audio view (drawn from audio_transforms)
    noise_dirs: tuple[str, ...] = ()  # audio files/folders mixed in by "noise" (corpus clips)
    llm: LLMConfig = LLMConfig()
    seed: int = 0


class SplitConfig(Section):
    val_fraction: float = 0.1
    test_fraction: float = 0.0
    salt: str = "polyclap"


class ShardConfig(Section):
    target_mb: float = 64.0
    max_samples_per_shard: int = 10000
    num_cpus_per_task: float = 1.0
    max_parallel_tasks: int | None = None


class CurationConfig(Section):
    """CLAP-score curation (DataComp's CLIP-score filter, for audio): a model scores every
    (audio, text) pair of the curated splits with the cosine of their embeddings.

    ``model``: a local polyclap export (``final/``) or transformers ``ClapModel`` directory
    (None: off). A sample is decided on its primary text's score: below ``min_score`` it is
    dropped in its shard task; below the ``percentile``-th percentile of its group's scores
    (``per``: each corpus, or all of the curated splits together) it is excluded when the
    build is finalized, when every score is known (dataprep/curation.py). Both: the higher
    cut wins. Neither: scores are only recorded (stats.clap_score, <split>/scores.parquet).
    """

    model: str | None = Field(
        default=None, description="scoring model dir: polyclap export or ClapModel (None: off)"
    )
    min_score: float | None = Field(
        default=None, ge=-1.0, le=1.0, description="drop a sample whose cosine is below this"
    )
    percentile: float | None = Field(
        default=None, gt=0.0, lt=100.0, description="drop the lowest p % of each group"
    )
    per: Literal["corpus", "all"] = Field(
        default="corpus", description="the group a percentile is taken over"
    )
    splits: tuple[Literal["train", "val", "test"], ...] = Field(
        default=("train",), description="splits scored and curated (others: untouched)"
    )
    batch_size: int = Field(default=16, ge=1, description="samples per scorer call and batch")
    device: Literal["cpu", "cuda"] = Field(
        default="cpu", description="cuda: each scorer actor reserves one GPU"
    )
    num_actors: int = Field(default=1, ge=1, description="scorer actors; each loads the model")
    num_cpus: float = Field(
        default=1.0, gt=0.0, description="CPUs reserved per actor (its torch threads)"
    )

    @model_validator(mode="after")
    def _needs_model(self) -> CurationConfig:
        if self.model is None and (self.min_score is not None or self.percentile is not None):
            raise ValueError(
                "curation.min_score/percentile need curation.model (the scoring model directory)"
            )
        if self.model is not None and not self.splits:
            raise ValueError("curation.splits is empty: name the splits to score")
        return self

    def __bool__(self) -> bool:
        return self.model is not None


_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def check_out(path: str) -> str:
    """``build.out``: a local/shared path (``file://`` stripped) or an object-store URI
    (``s3://``, ``gs://``: each shard is built in local scratch and uploaded, see
    dataprep/build/remote.py); any other scheme is refused (no atomic object commit)."""
    if path.startswith("file://"):
        return path.removeprefix("file://")
    m = _URI.match(path)
    if m and m.group(0)[:-3].lower() not in WRITABLE:
        raise ValueError(
            f"build.out must be a local/shared path or an {'/'.join(WRITABLE)}:// URI, not "
            f"{path!r}: the build commits each shard as a whole object (see infra/STORAGE.md)"
        )
    return path


class BuildConfig(Section):
    corpora: tuple[CorpusConfig, ...] = ()
    eval_corpora: tuple[CorpusConfig, ...] = ()  # decontamination sources (never sharded)
    out: str = "outputs/shards"  # local path or s3:// / gs:// URI
    scratch: str | None = None  # local folder for a remote out's tars (default: a temp dir)
    audio: AudioConfig = AudioConfig()
    filters: FilterConfig = FilterConfig()
    dedup: DedupConfig = DedupConfig()
    augment: AugmentConfig = AugmentConfig()
    splits: SplitConfig = SplitConfig()
    shards: ShardConfig = ShardConfig()
    curation: CurationConfig = CurationConfig()
    seed: int = 0

    @field_validator("corpora")
    @classmethod
    def _unique_names(cls, v: tuple[CorpusConfig, ...]) -> tuple[CorpusConfig, ...]:
        names = [c.name for c in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"corpus names must be unique, repeated: {sorted(dup)}")
        return v

    @field_validator("out")
    @classmethod
    def _out(cls, v: str) -> str:
        return check_out(v)


# Old key (dotted, ``*`` for a list index) -> what to write instead. Shown by load_config.
_DATA_REMOVED = {
    "features.multirate_hops": "removed: the extra mel members it wrote were never read",
    "build.corpora.*.role": "removed (it was never read): list decontamination sources under "
    "build.eval_corpora",
    "build.eval_corpora.*.role": "removed (it was never read): every build.eval_corpora entry "
    "is a decontamination source",
}


class DataConfig(Section):
    """The data side's view of an experiment file: what the shard build and the loader read."""

    removed_keys: ClassVar[dict[str, str]] = _DATA_REMOVED

    name: str = "polyclap"
    features: FeatureConfig = FeatureConfig()
    build: BuildConfig = BuildConfig()
    loader: LoaderConfig = LoaderConfig()

    @classmethod
    def view(cls, cfg: DataConfig) -> DataConfig:
        """Only the data sections of ``cfg`` (e.g. of an ExperimentConfig), as a DataConfig:
        what a build task is sent, so a worker validates exactly the sections it uses."""
        return cls.model_validate({k: getattr(cfg, k) for k in cls.model_fields})
