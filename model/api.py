"""The public inference API: ``from model import CLAP``.

    m = CLAP.from_pretrained("outputs/demo/run/final")   # or a transformers ClapModel dir
    probs = m.zero_shot(["dog.wav"], ["dog barking", "rain"])   # [1, 2], rows sum to 1

Audio goes through exactly the waveform path of training (``dataprep.core.waveform``: decode any
codec/rate/channels, downmix, resample to the feature rate, the build's loudness gain), then the
model's featurizer (``dataprep.core.features.make_featurizer``). Two rules differ from the shard
build, on purpose: inference never trims (the query is what the caller gave; the build's trim cut
a 5-s ESC-50 clip to 0.73 s) and never drops audio past ``max_segments_per_source`` (a long file
is cut into the build's segments and the evaluator's windows, all of them embedded; one clip
embedding is their mean, renormalized; ``per_window=True`` returns them one by one).

An imported transformers ``ClapModel`` (LAION-CLAP) directory carries its own preprocessing:
48 kHz, no loudness normalization, no trim, the ``ClapFeatureExtractor`` mel
(``truncation="rand_trunc"``, i.e. repeat-padding to 10 s; a longer file is windowed in 10-s
pieces instead of cropped at random). Its ``embed_audio`` / ``embed_text`` equal
``ClapModel.get_audio_features`` / ``get_text_features`` (tests/model/test_api.py).

Bad items do not stop a batch: an unreadable or empty file becomes a NaN row and an
:class:`ItemError` (``return_errors=True``), the rest are embedded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import ModelHubMixin
from tqdm.auto import tqdm

from dataprep.core.decode import AudioError
from dataprep.core.features import feature_fingerprint, make_featurizer
from dataprep.core.waveform import feature_windows, load_waveform, mel_windows
from model.frames import FrameAlignment
from model.inference import (
    ItemError,
    ModelDirError,
    Preprocessing,
    Windows,
    as_list,
    checked_transcripts,
    clap_features,
    encode_windows,
    transformers_model_type,
)
from model.prompts import ANY_LANG, check_labels, ensemble, normalize, resolve_templates
from model.sync import local_copy

log = logging.getLogger(__name__)

PROGRESS_MIN_WINDOWS = 64  # a progress bar from this many model inputs on
# what an export directory holds (model.weights.write_export); saving over one is fine
EXPORT_FILES = set("model.safetensors config.json tokenizer.model meta.json README.md eval".split())


class CLAP(
    FrameAlignment,
    ModelHubMixin,
    library_name="polyclap",
    tags=["audio", "clap", "zero-shot-audio-classification"],
):
    """A trained polyclap model (or an imported ClapModel); frame-level: model.frames."""

    def __init__(
        self,
        net: Any,
        pre: Preprocessing,
        tokenize: Any,
        *,
        kind: str = "polyclap",
        source: str | None = None,
        cfg: Any = None,
        tokenizer: Any = None,
        device: str | None = None,
        batch_size: int = 16,
        progress: bool | None = None,
    ) -> None:
        self.net = net.eval()
        self.pre = pre
        self.tokenize = tokenize
        self.kind = kind
        self.source = source
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.featurizer = make_featurizer(pre.features)
        self.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def to(self, device: str | torch.device) -> CLAP:
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    @property
    def embed_dim(self) -> int:
        return int(self.net.cfg.embed_dim)

    # -- loading / saving ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike[str], **kwargs: Any
    ) -> CLAP:
        """A polyclap export or a transformers ClapModel directory (local; see the module
        docstring) or a synced export's URI (model.sync); device, batch_size, progress go on."""
        path = local_copy(pretrained_model_name_or_path, kwargs.pop("cache_dir", None))
        if not path.is_dir():
            raise ModelDirError(
                f"{path}: not a local directory (nothing is downloaded at run time: fetch it "
                f"first, e.g. huggingface_hub.snapshot_download, and pass the directory)"
            )
        return super().from_pretrained(path, **kwargs)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None = None,
        cache_dir: Any = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: Any = None,
        device: str | None = None,
        batch_size: int = 16,
        progress: bool | None = None,
        **_config: Any,
    ) -> CLAP:
        # ``_config``: huggingface_hub passes the keys of a config.json matching __init__ names;
        # the directory itself is read below.
        path = Path(model_id)
        kw = {"device": device, "batch_size": batch_size, "progress": progress}
        hf = transformers_model_type(path)
        if hf is not None:
            if hf != "clap":
                raise ModelDirError(
                    f"{path}: a transformers {hf!r} directory, not a ClapModel or a polyclap export"
                )
            return cls._from_clap_dir(path, **kw)
        from model.tokenizer import make_tokenize
        from model.weights import load_for_eval

        net, cfg, tok = load_for_eval(path)
        return cls(
            net,
            Preprocessing.of(cfg),
            make_tokenize(tok, cfg.model.text),
            kind="polyclap",
            source=str(path),
            cfg=cfg,
            tokenizer=tok,
            **kw,
        )

    @classmethod
    def _from_clap_dir(cls, path: Path, **kw: Any) -> CLAP:
        from model.hf_import import import_clap
        from model.hf_text import HFTokenizer
        from model.tokenizer import make_tokenize

        features = clap_features(path)
        net, _ = import_clap(path, n_mels=features.n_mels)
        pre = Preprocessing(features, None, 10.0, 0.0, int(net.cfg.audio.max_frames))
        tok = HFTokenizer(path)
        return cls(
            net,
            pre,
            make_tokenize(tok, net.cfg.text),
            kind="clap",
            source=str(path),
            tokenizer=tok,
            **kw,
        )

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Write a polyclap export to ``save_directory`` (new, empty or an export already);
        ``push_to_hub=True, repo_id=...`` uploads it (huggingface_hub; not run in tests)."""
        if Path(save_directory).is_dir():
            present = {p.name for p in Path(save_directory).iterdir()}
            if present - EXPORT_FILES:
                # the mixin deletes config.json and write_export replaces the whole directory:
                # never wipe someone's other files
                raise ModelDirError(
                    f"{save_directory}: holds {sorted(present - EXPORT_FILES)[:5]}; "
                    f"save_pretrained writes a whole export directory, choose a new or empty one"
                )
        return super().save_pretrained(save_directory, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        """A polyclap export (``model.weights.write_export``, model card included). An imported
        ClapModel has no polyclap config to save: its own directory is its export."""
        from model.weights import write_export

        if self.cfg is None:
            raise ModelDirError(
                f"{self.source}: an imported ClapModel is not re-saved (its "
                f"directory already is the model; fine-tune it with "
                f"model.init_from to make a polyclap export)"
            )
        tok_path = getattr(self.tokenizer, "path", None)
        write_export(
            save_directory,
            self.net.state_dict(),
            self.cfg,
            tokenizer=Path(tok_path) if tok_path else None,
            meta={"saved_by": "model.api.CLAP.save_pretrained", "source": self.source},
        )

    # -- audio ---------------------------------------------------------------------------------
    def inputs(
        self, item: Any, sample_rate: int | None = None, name: str | None = None
    ) -> list[tuple[float, float, np.ndarray]]:
        """``(start_s, end_s, features)`` per model input of one file or array."""
        p = self.pre
        w = load_waveform(
            item, p.features.sample_rate_hz, p.audio, source_rate_hz=sample_rate, name=name
        )
        wave = w.normalized()
        if wave.shape[0] == 0:
            raise AudioError("empty_audio", f"{name}: no samples")
        return feature_windows(
            wave,
            p.features.sample_rate_hz,
            self.featurizer,
            segment_s=p.segment_s,
            overlap_s=p.overlap_s,
            max_frames=p.max_frames,
        )

    def embed_audio(
        self,
        audio: Any,
        sample_rate: int | None = None,
        per_window: bool = False,
        return_errors: bool = False,
        transcripts: Sequence[str | None] | None = None,
    ) -> Any:
        """Embeddings ``[N, D]`` (L2-normalized float32) of files/URIs or arrays (arrays need
        ``sample_rate``). A file that cannot be read is a NaN row (and an :class:`ItemError`
        with ``return_errors=True``); ``per_window=True`` gives a :class:`Windows` per item
        (None for a failed one) instead. ``transcripts`` (one per item, None/"" for none): what
        a model trained with ``model.calm.with_transcript`` reads after the acoustic tokens."""
        items = as_list(audio)
        words = checked_transcripts(self.cfg, transcripts, len(items))
        wins, owner, spans, errors = [], [], [], []
        for i, item in enumerate(
            tqdm(items, desc="decode", unit="file", disable=not self._show(len(items)))
        ):
            name = str(item) if isinstance(item, (str, os.PathLike)) else f"array[{i}]"
            try:
                for start, end, feat in self.inputs(item, sample_rate, name):
                    wins.append(feat)
                    owner.append(i)
                    spans.append((start, end))
            except AudioError as err:
                errors.append(ItemError(i, name, err.reason, err.detail))
            except (OSError, ValueError, RuntimeError) as err:  # any bad input: a row, not a crash
                errors.append(ItemError(i, name, "decode_error", f"{type(err).__name__}: {err}"))
        for e in errors:
            log.warning("embed_audio: %s not embedded (%s: %s)", e.name, e.reason, e.detail)
        tr = None if words is None else ([words[i] for i in owner], self.tokenize)
        flat = (
            encode_windows(self.net, wins, self.batch_size, self.device, self._show(len(wins)), tr)
            if wins
            else np.zeros((0, self.embed_dim), np.float32)
        )
        owner_a = np.asarray(owner, dtype=np.int64)
        if per_window:
            out: Any = [None] * len(items)
            for i in sorted(set(owner)):
                sel = owner_a == i
                s = np.asarray(spans)[sel]
                out[i] = Windows(flat[sel], s[:, 0], s[:, 1])
        else:
            out = np.full((len(items), flat.shape[1]), np.nan, dtype=np.float32)
            if wins:
                acc = np.zeros((len(items), flat.shape[1]), dtype=np.float64)
                np.add.at(acc, owner_a, flat)
                done = np.unique(owner_a)
                out[done] = normalize(acc[done])
        return (out, errors) if return_errors else out

    def embed_features(self, mels: Sequence[np.ndarray]) -> np.ndarray:
        """``[N, D]`` of precomputed features (a shard's ``mel.npy``, made with the model's
        feature config: check the fingerprint first), windowed and averaged as audio is."""
        wins, owner = [], []
        for i, mel in enumerate(mels):
            for w in mel_windows(np.asarray(mel), self.pre.max_frames):
                wins.append(w)
                owner.append(i)
        flat = encode_windows(self.net, wins, self.batch_size, self.device, self._show(len(wins)))
        acc = np.zeros((len(mels), flat.shape[1]), dtype=np.float64)
        np.add.at(acc, np.asarray(owner), flat)
        return normalize(acc)

    def fingerprint(self) -> str:
        """sha256 (16 hex) of the weights and the preprocessing: an index records it, a search
        with another model is refused."""
        h = hashlib.sha256(
            json.dumps(
                {
                    "features": feature_fingerprint(self.pre.features),
                    "audio": self.pre.audio and self.pre.audio.model_dump(),
                    "segment": [self.pre.segment_s, self.pre.overlap_s],
                },
                sort_keys=True,
            ).encode()
        )
        for k, v in sorted(self.net.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def _show(self, n: int) -> bool:
        return self.progress if self.progress is not None else n >= PROGRESS_MIN_WINDOWS

    # -- text ----------------------------------------------------------------------------------
    @torch.no_grad()
    def embed_text(
        self, texts: str | Sequence[str], lang: str | Sequence[str] | None = None
    ) -> np.ndarray:
        """Embeddings ``[N, D]`` of texts, tokenized exactly as in training. ``lang`` (one code
        or one per text): a model trained with language tags (``model.text.lang_tags``) gets
        the language's ``<lang:xx>`` token first, as in training (an unknown code is an error);
        otherwise the language is only checked, the towers read it from the words."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("no texts to embed")
        if lang is not None and not isinstance(lang, str) and len(lang) != len(texts):
            raise ValueError(f"{len(lang)} languages for {len(texts)} texts")
        langs = [lang] * len(texts) if lang is None or isinstance(lang, str) else list(lang)
        if lang is None and self.cfg is not None and self.cfg.model.text.lang_tags:
            log.warning("embed_text: no lang given to a model trained with language tags")
        out = []
        for b in range(0, len(texts), self.batch_size):
            sl = slice(b, b + self.batch_size)
            ids, mask = self.tokenize(texts[sl], langs=langs[sl])
            emb = self.net.encode_text(ids.to(self.device), mask.to(self.device))
            out.append(emb.float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def class_embeddings(
        self,
        labels: Sequence[str],
        templates: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
        langs: Sequence[str] | None = None,
    ) -> np.ndarray:
        """``[C, D]``: per label, the mean of its prompts' embeddings per language, then the
        mean over languages (renormalized each time), as the evaluation harness ensembles."""
        labels = check_labels(labels)
        temps = resolve_templates(templates, langs)
        per_lang = []
        for lang, lang_temps in temps.items():
            prompts = [t.format(label) for label in labels for t in lang_temps]
            emb = self.embed_text(prompts, lang=None if lang == ANY_LANG else lang)
            per_lang.append(ensemble(emb, [len(lang_temps)] * len(labels)))
        return normalize(np.mean(np.stack(per_lang), axis=0))

    # -- both ----------------------------------------------------------------------------------
    def similarity(
        self, audio: Any, texts: str | Sequence[str], sample_rate: int | None = None
    ) -> np.ndarray:
        """Cosine similarity ``[N_audio, N_text]`` (NaN rows for unreadable audio)."""
        return self.embed_audio(audio, sample_rate) @ self.embed_text(texts).T

    def zero_shot(
        self,
        audio: Any,
        labels: Sequence[str],
        templates: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
        langs: Sequence[str] | None = None,
        sample_rate: int | None = None,
        return_errors: bool = False,
    ) -> Any:
        """Per-class probabilities ``[N, C]`` (softmax of the model's logit scale times the
        cosine to each label's prompt ensemble); NaN rows for unreadable audio."""
        classes = self.class_embeddings(labels, templates, langs)
        emb, errors = self.embed_audio(audio, sample_rate, return_errors=True)
        probs = self.probabilities(emb, classes)
        return (probs, errors) if return_errors else probs

    def probabilities(self, audio_emb: np.ndarray, class_emb: np.ndarray) -> np.ndarray:
        """Softmax over classes of the model's logit scale times the cosine ``[N, C]``."""
        with torch.no_grad():
            scale = float(self.net.logit_scale())
        logits = torch.from_numpy(audio_emb @ class_emb.T) * scale
        return torch.softmax(logits, dim=-1).numpy().astype(np.float32)
