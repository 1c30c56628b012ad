"""The task file: typed, validated, unknown keys are errors.

::

    defaults: {batch_size: 32, n_boot: 1000, seed: 0}
    cache_dir: outputs/eval_cache          # featurized eval sets, one file per fingerprint
    tasks:
      - name: esc50_zero_shot
        type: zero_shot                    # zero_shot | retrieval | emotion | keyword_spotting
                                           # | linear_probe | few_shot | sound_event_detection
        corpus: {name: esc50, reader: esc50, root: /data/ESC-50, options: {eval_folds: [5]}}
        split: test                        # keep items whose corpus split is this (None: all)
        templates: {en: ["the sound of {}", "{}"]}
      - name: mswc_few_shot                # few-shot keyword spotting within each language
        type: few_shot
        corpus: {name: mswc, reader: mswc, root: /data/mswc, options: {languages: [sw, ta]}}
        k: 5
        per_lang: true                     # accuracy_<lang> per language and overall
      - name: mixtures_sed                 # zero-shot sound-event detection (frame_similarity)
        type: sound_event_detection
        corpus: {name: mixtures, reader: folder, root: /data/mixtures}
        ground_truth: events.tsv           # DCASE tsv: filename onset offset event_label
        sed: {median_filter: 3, thresholds: 50, dtc_threshold: 0.7, gtc_threshold: 0.7}

Relative corpus roots are resolved against the current directory, then against the repository
root (so the shipped demo file works from anywhere inside a checkout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dataprep.core.config import ConfigError, CorpusConfig
from dataprep.corpora import validate_corpora

# one owner of the default prompts for the API and the harness: model/prompts.py
from model.prompts import DEFAULT_TEMPLATES, EMOTION_TEMPLATES, KEYWORD_TEMPLATES

REPO = Path(__file__).resolve().parents[2]

TaskType = Literal[
    "zero_shot",
    "retrieval",
    "emotion",
    "keyword_spotting",
    "linear_probe",
    "few_shot",
    "sound_event_detection",
]

# CREMA-D / RAVDESS label names -> the adjective used in prompts
EMOTION_WORDS = {
    "anger": "angry", "angry": "angry", "disgust": "disgusted", "fear": "fearful",
    "fearful": "fearful", "happy": "happy", "neutral": "neutral", "sad": "sad",
    "calm": "calm", "surprised": "surprised", "surprise": "surprised",
}  # fmt: skip


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(_Model):
    batch_size: int = 32
    n_boot: int = 1000  # bootstrap resamples for the 95% interval
    seed: int = 0


class SedOptions(_Model):
    """``sound_event_detection``: frame scores -> events -> PSDS (``psds_eval``, DCASE's
    reference implementation). Defaults: the DCASE PSDS1 scenario."""

    median_filter: int = Field(1, ge=1)  # frames (odd); 1: no smoothing of the frame scores
    thresholds: int = Field(50, ge=2)  # operating points, at quantiles of all frame scores
    dtc_threshold: float = Field(0.7, ge=0.0, le=1.0)  # detection tolerance criterion
    gtc_threshold: float = Field(0.7, ge=0.0, le=1.0)  # ground-truth intersection criterion
    cttc_threshold: float = Field(0.3, ge=0.0, le=1.0)  # cross-trigger tolerance criterion
    alpha_ct: float = Field(0.0, ge=0.0)  # cross-trigger weight in the effective FP rate
    alpha_st: float = Field(1.0, ge=0.0)  # cost of instability across classes
    max_efpr: float = Field(100.0, gt=0.0)  # effective FPs per duration_unit the ROC spans
    duration_unit: Literal["minute", "hour"] = "hour"

    @model_validator(mode="after")
    def _odd_filter(self) -> SedOptions:
        if self.median_filter % 2 == 0:
            raise ValueError(f"sed.median_filter must be odd, got {self.median_filter}")
        return self


class TaskConfig(_Model):
    name: str
    type: TaskType
    corpus: CorpusConfig
    split: str | None = None  # corpus split to keep (after the reader's own split mapping)
    # zero_shot / emotion / keyword_spotting: prompt templates per language, averaged per class
    templates: dict[str, tuple[str, ...]] | None = None
    # optional display names per language for labels: {de: {dog: Hund}}; missing -> the label
    class_names: dict[str, dict[str, str]] = Field(default_factory=dict)
    # retrieval
    directions: tuple[Literal["t2a", "a2t"], ...] = ("t2a", "a2t")
    recall_ks: tuple[int, ...] = (1, 5, 10)
    # linear_probe / few_shot
    folds: int = 5  # fixed folds: the corpus's own ``fold`` when present, else a hash of group
    fold_key: str = "fold"  # attribute holding the corpus fold (ESC-50, UrbanSound8K)
    probe_c: float = 1.0  # inverse L2 strength of the logistic regression
    k: int = 1  # few_shot: support examples per class
    episodes: int = 20  # few_shot: random support draws averaged
    per_lang: bool = False  # few_shot: classes within each language (few-shot keyword spotting)
    max_items: int | None = None
    # sound_event_detection: DCASE ground truth (tab-separated filename, onset, offset,
    # event_label; filename = the reader's source_id, a path relative to the corpus root);
    # relative to the corpus root unless absolute. Its event labels are the classes.
    ground_truth: str | None = None
    sed: SedOptions = SedOptions()

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        if (self.type == "sound_event_detection") != (self.ground_truth is not None):
            raise ValueError("ground_truth is what type sound_event_detection needs (and only it)")
        if self.type == "few_shot" and self.k < 1:
            raise ValueError("few_shot needs k >= 1")
        if self.type == "linear_probe" and self.folds < 2:
            raise ValueError("linear_probe needs folds >= 2")
        if self.templates is not None:
            for lang, temps in self.templates.items():
                for t in temps:
                    if t.count("{}") != 1:
                        raise ValueError(f"template {t!r} ({lang}) must contain exactly one '{{}}'")
        return self

    def prompt_templates(self) -> dict[str, tuple[str, ...]]:
        if self.templates:
            return self.templates
        if self.type == "emotion":
            return EMOTION_TEMPLATES
        if self.type == "keyword_spotting":
            return KEYWORD_TEMPLATES  # each language's keywords with its own templates
        # zero-shot: English, and each language the task names its classes in
        langs = ["en", *(x for x in self.class_names if x in DEFAULT_TEMPLATES and x != "en")]
        return {x: DEFAULT_TEMPLATES[x] for x in langs}


class TaskFile(_Model):
    defaults: Defaults = Defaults()
    cache_dir: str = "outputs/eval_cache"
    tasks: tuple[TaskConfig, ...]

    @model_validator(mode="after")
    def _unique(self) -> TaskFile:
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"task names must be unique, repeated: {dup}")
        if not self.tasks:
            raise ValueError("no tasks")
        return self


def resolve_root(root: str, base: Path | None = None) -> str:
    """Relative local roots: against ``base`` (cwd), then the repository; URIs unchanged."""
    if "://" in root or Path(root).is_absolute():
        return root
    for b in (base or Path.cwd(), REPO):
        cand = (b / root).resolve()
        if cand.exists():
            return str(cand)
    return root


def load_tasks(path: str | Path, only: list[str] | None = None) -> TaskFile:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"task file not found: {p}")
    tree: Any = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    try:
        tf = TaskFile.model_validate(tree)
    except ValidationError as err:
        lines = [f"invalid task file {p}:"]
        for e in err.errors():
            loc = ".".join(str(x) for x in e["loc"])
            lines.append(
                f"  unknown key {loc!r}"
                if e["type"] == "extra_forbidden"
                else f"  {loc}: {e['msg']}"
            )
        raise ConfigError("\n".join(lines)) from None
    validate_corpora(t.corpus for t in tf.tasks)  # reader options: typed, checked up front
    tasks = []
    for t in tf.tasks:
        if only and t.name not in only:
            continue
        corpus = t.corpus.model_copy(update={"root": resolve_root(t.corpus.root)})
        tasks.append(t.model_copy(update={"corpus": corpus}))
    if only:
        missing = sorted(set(only) - {t.name for t in tasks})
        if missing:
            raise ConfigError(f"{p}: no task named {missing}; tasks: {[t.name for t in tf.tasks]}")
    return tf.model_copy(update={"tasks": tuple(tasks)})
