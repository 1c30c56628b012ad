"""The generated model card (``README.md``) of an export directory.

Architecture and feature preset from the model's config; the training data summary from the
shard set's ``build.json`` and per-split ``index.parquet`` (corpora, hours, languages) and the
samples' JSON records (licenses: the index has no license column); the evaluation table if one
was written (``jobs/evaluate.py`` refreshes the card of the export it scored); intended use and
limits. Anything not found is said to be unknown, never guessed.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from dataprep.core import parquet
from dataprep.core.atomic import atomic_write_bytes
from dataprep.core.features import feature_fingerprint

log = logging.getLogger(__name__)

CARD = "README.md"
_SPLITS = ("train", "val", "test")


def data_summary(shards: Path) -> dict[str, Any] | None:
    """Corpora, hours, languages and licenses per split of a shard set (None: no build.json)."""
    build = shards / "build.json"
    if not build.is_file():
        return None
    record = json.loads(build.read_text())
    out: dict[str, Any] = {
        "root": str(shards),
        "fingerprint": record.get("feature_fingerprint"),
        "corpora": [
            c.get("name") for c in record.get("config", {}).get("build", {}).get("corpora", [])
        ],
        "splits": {},
    }
    for split in _SPLITS:
        index = shards / split / "index.parquet"
        if not index.is_file():
            continue
        rows = parquet.read_table(index, columns=["corpus", "duration", "lang"]).to_pylist()
        hours: dict[str, float] = defaultdict(float)
        for r in rows:
            hours[r["corpus"]] += (r["duration"] or 0.0) / 3600.0
        licenses = _licenses(shards / split, set(hours))
        out["splits"][split] = {
            "samples": len(rows),
            "hours": {k: round(v, 3) for k, v in sorted(hours.items())},
            "languages": dict(Counter(r["lang"] or "und" for r in rows).most_common()),
            "licenses": {k: sorted(v) for k, v in sorted(licenses.items())},
        }
    return out


def _licenses(split_dir: Path, corpora: set[str]) -> dict[str, list[str]]:
    """Licenses recorded on the samples, read from the tars' JSON records in shard order until
    every corpus of the split was seen once (the index has no license column; a corpus's
    license is one per corpus in every reader today)."""
    from dataprep.core.sample import META
    from dataprep.core.shards import shard_paths
    from dataprep.core.tario import iter_tar_members

    found: dict[str, set[str]] = defaultdict(set)
    for path in shard_paths(split_dir):
        for _, members in iter_tar_members(path):
            meta = json.loads(members.get(META, b"{}"))
            found[meta.get("corpus", "?")].add(str(meta.get("license") or "unknown"))
            if corpora <= set(found):
                return {k: sorted(v) for k, v in sorted(found.items())}
    return {k: sorted(v) for k, v in sorted(found.items())}


def _data_section(summary: dict[str, Any] | None) -> list[str]:
    if summary is None:
        return ["Unknown: no `build.json` was found for the training shards."]
    lines = [
        (
            f"Shard set `{summary['root']}` (feature fingerprint `{summary['fingerprint']}`), "
            f"corpora: {', '.join(summary['corpora']) or 'unknown'}."
        ),
        "",
        "| split | samples | hours per corpus | languages | licenses |",
        "|---|---|---|---|---|",
    ]
    for split, s in summary["splits"].items():
        hours = ", ".join(f"{k} {v:.2f}" for k, v in s["hours"].items())
        langs = ", ".join(f"{k} ({v})" for k, v in s["languages"].items())
        lic = "; ".join(f"{k}: {', '.join(v)}" for k, v in s["licenses"].items())
        lines.append(f"| {split} | {s['samples']} | {hours} | {langs} | {lic} |")
    return lines


def _architecture(cfg: Any) -> list[str]:
    m, f = cfg.model, cfg.features
    audio = (
        f"patch transformer (dim {m.audio.dim}, depth {m.audio.depth}, {m.audio.pooling} pooling)"
        if m.audio.kind == "patch"
        else f"transformers {m.audio.kind} tower from `{m.audio.path}`"
    )
    text = {
        "transformer": f"transformer over sentencepiece ids (dim {m.text.dim}, depth "
        f"{m.text.depth}, vocab {m.text.vocab_size})",
        "minilm": "the packaged all-MiniLM-L6-v2",
        "hf": f"transformers text tower from `{m.text.path}` ({m.text.pooling} pooling)",
    }
    return [
        f"- audio tower: {audio}, at most {m.audio.max_frames} frames per input",
        f"- text tower: {text[m.text.kind]}, at most {m.text.max_len} tokens",
        f"- shared space: {m.embed_dim} dimensions, {m.projection} projections, "
        f"loss {m.loss.kind}"
        + (f", codebook {m.loss.codebook_size}" if m.loss.codebook_size else ""),
        (
            f"- features: preset `{f.preset}`, {f.sample_rate_hz} Hz, {f.n_mels} mel bins, hop "
            f"{f.hop_length} (fingerprint `{feature_fingerprint(f)}`)"
        ),
    ]


def model_card(
    cfg: Any, *, summary: dict[str, Any] | None, eval_table: str | None, name: str | None = None
) -> str:
    audio = cfg.build.audio
    norm = (
        f"loudness-normalized to {audio.target_lufs} LUFS (peak {audio.peak_limit})"
        if audio.target_lufs is not None
        else f"peak-normalized to {audio.peak_limit}"
    )
    lines = [
        "---",
        "library_name: polyclap",
        "tags: [audio, clap, zero-shot-audio-classification]",
        "---",
        "",
        f"# {name or cfg.name or 'polyclap model'}",
        "",
        "A contrastive audio-language model (CLAP) trained with polyclap.",
        "",
        "```python",
        "from model import CLAP",
        'm = CLAP.from_pretrained("THIS_DIRECTORY")',
        'probs = m.zero_shot(["clip.wav"], ["dog barking", "rain"])',
        "```",
        "",
        "## Architecture",
        "",
        *_architecture(cfg),
        "",
        "## Input",
        "",
        (
            f"Any codec, rate and channel count: decoded, downmixed, resampled to "
            f"{cfg.features.sample_rate_hz} Hz and {norm}, as in training. Inference does not trim "
            f"silence; audio longer than {audio.max_segment_s:g} s is embedded in segments whose "
            f"embeddings are averaged."
        ),
        "",
        "## Training data",
        "",
        *_data_section(summary),
        "",
        "## Evaluation",
        "",
        eval_table.strip() if eval_table else "No evaluation table found.",
        "",
        "## Intended use and limits",
        "",
        (
            "- Intended: zero-shot audio classification with free-text labels, text-to-audio and "
            "audio-to-audio retrieval, audio/text embeddings for research."
        ),
        (
            "- The model knows only what its training data covers (the table above): sound "
            "classes, "
            "languages and recording conditions outside it are guesses; check accuracy on your own "
            "labelled sample before relying on it."
        ),
        (
            "- Scores are similarities, not calibrated probabilities of presence; the zero-shot "
            "softmax is relative to the label list given."
        ),
        (
            "- Not for surveillance of people, speaker identification or decisions about "
            "individuals; speech corpora in the training data carry their own license terms."
        ),
        "",
    ]
    return "\n".join(lines)


def _find_eval_table(dest: Path, run_dir: Path | None) -> str | None:
    for d in (dest, run_dir, dest.parent):
        if d is None:
            continue
        for f in (d / "eval" / "results.md", d / "results.md"):
            if f.is_file():
                return f.read_text()
    return None


def write_model_card(
    dest: str | Path,
    cfg: Any,
    *,
    shards: str | Path | None = None,
    run_dir: str | Path | None = None,
    eval_table: str | Path | None = None,
) -> Path:
    """Write ``<dest>/README.md``; ``shards`` defaults to ``cfg.loader.shards``; the eval table
    is ``eval_table`` (a Markdown file) or the first ``eval/results.md`` found beside ``dest``
    or in ``run_dir``."""
    dest = Path(dest)
    root = Path(shards) if shards is not None else Path(getattr(cfg.loader, "shards", ""))
    try:
        summary = data_summary(root) if str(root) else None
    except (OSError, ValueError, KeyError) as err:  # a card never fails an export
        log.warning("model card: no data summary from %s (%s)", root, err)
        summary = None
    if eval_table is not None and Path(eval_table).is_file():
        table: str | None = Path(eval_table).read_text()
    else:
        table = _find_eval_table(dest, Path(run_dir) if run_dir else None)
    text = model_card(cfg, summary=summary, eval_table=table)
    atomic_write_bytes(dest / CARD, text.encode())
    return dest / CARD
