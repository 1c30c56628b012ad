"""Every file of bad_inputs gets the outcome its README asks for (one test per file).

The manifest is read by the real NeMo reader and every SampleRef goes through the real
:class:`dataprep.process.SampleProcessor` (the body of a shard task), in manifest order. The
per-file expectations run with the processor's in-task dedup off, because the fixture reuses
one utterance in several files (truncated.wav is its first 1.1 s, wrong_extension_is_flac.mp3 its
first 2.0 s, weird_transcript_audio.wav has the very same samples as dup_original.wav); the
dedup tests then run the processor with the production defaults over the same rows.
The 5-minute clip is generated at test time (it is not bundled).
"""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from dataprep.core.config import CorpusConfig, DataConfig
from dataprep.core.sample import AUDIO, META, Reject, SampleRef
from dataprep.corpora import read_corpus
from dataprep.process import ProcessResult, SampleProcessor
from dataprep.text import normalize_text

_spec = importlib.util.spec_from_file_location(
    "layout_builders", Path(__file__).resolve().parents[1] / "fixtures" / "layouts" / "builders.py"
)
layouts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(layouts)

# The defaults are the README's policy: clipped.wav (~8 % of samples at full scale) is kept
# with a flag because FilterConfig rejects only above 20 %. keep_audio stores the normalized
# wave, so the peak limit can be checked on what the shard holds.
NO_DEDUP = {"dedup": {"exact": False, "near": False}}


def config(**build: Any) -> DataConfig:
    tree = {"audio": {"keep_audio": True}, **build}
    return DataConfig.model_validate({"build": tree})


POLICY = config(**NO_DEDUP)


@pytest.fixture(scope="module")
def rows(corpora_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    """The reader's output in manifest order: a SampleRef or a reader Reject per row."""
    root = tmp_path_factory.mktemp("bad_inputs")
    shutil.copytree(corpora_root / "bad_inputs", root, dirs_exist_ok=True)
    if not (root / "very_long_5min.ogg").exists():
        long_clip = layouts.long_clip(corpora_root, tmp_path_factory.getbasetemp())
        shutil.copy(long_clip, root / "very_long_5min.ogg")
    # The fixture's texts describe its clips (README: "a captioning task"); a NeMo manifest is
    # read as transcripts unless it says so, and transcripts are never cut into windows.
    cfg = CorpusConfig(
        name="bad", reader="nemo", root=str(root), options={"default_task": "caption"}
    )
    items = list(read_corpus(cfg))
    assert len(items) == len((root / "manifest.jsonl").read_text().splitlines())
    return items


def _name(item: SampleRef | Reject) -> str:
    if isinstance(item, SampleRef):
        return item.source_id
    return item.source.split(":", 1)[1].split(" ")[0]


def run(rows: list[Any], cfg: DataConfig) -> dict[str, list[ProcessResult]]:
    """Every row through one SampleProcessor (one shard task), outcomes grouped by file."""
    proc = SampleProcessor(cfg, augment=False)
    by_file: dict[str, list[ProcessResult]] = {}
    try:
        for item in rows:
            res = ProcessResult(rejects=[item]) if isinstance(item, Reject) else proc(item, "train")
            # every row accounted for: samples or exactly one reject
            assert res.samples or len(res.rejects) == 1, (item, res.rejects)
            by_file.setdefault(_name(item), []).append(res)
    finally:
        proc.close()
    return by_file


@pytest.fixture(scope="module")
def results(rows: list[Any]) -> dict[str, list[ProcessResult]]:
    return run(rows, POLICY)


def _only(results: dict[str, list[ProcessResult]], name: str, index: int = 0) -> ProcessResult:
    return results[name][index]


def _metas(res: ProcessResult) -> list[dict[str, Any]]:
    return [s[META] for s in res.samples]


@pytest.mark.parametrize(
    ("name", "stage", "reason"),
    [
        ("empty.wav", "decode", "empty_file"),
        ("not_audio.wav", "decode", "not_audio"),
        ("silent.wav", "filter", "silent"),
        ("too_short_0.05s.wav", "filter", "too_short"),
        ("nan_inf_float.wav", "decode", "non_finite"),
        ("missing_file.wav", "reader", "missing_file"),
    ],
)
def test_skipped_with_reason(
    results: dict[str, list[ProcessResult]], name: str, stage: str, reason: str
) -> None:
    o = _only(results, name)
    assert not o.samples
    assert [(r.stage, r.reason) for r in o.rejects] == [(stage, reason)]
    assert o.rejects[0].detail  # a sentence for the humans reading rejects.parquet
    assert o.rejects[0].source == f"bad:{name}" and o.rejects[0].corpus == "bad"


def _dedup_verdicts(rows: list[Any], cfg: DataConfig) -> dict[str, str | None]:
    """First row of each file: None when kept, else the reject reason."""
    out: dict[str, str | None] = {}
    for name, outcomes in run(rows, cfg).items():
        first = outcomes[0]
        out[name] = None if first.samples else first.rejects[0].reason
    return out


def test_dedup_reduces_the_dup_group_to_one(rows: list[Any]) -> None:
    """Production defaults (exact + near dedup): copies are rejected as duplicates."""
    verdicts = _dedup_verdicts(rows, config())
    dup_group = ["dup_original.wav", "dup_copy_renamed.wav", "dup_reencoded.flac"]
    # At most one of the group stays: none when an earlier file (truncated.wav, the same
    # utterance's first 1.1 s) already holds the audio as a near-duplicate.
    assert sum(verdicts[n] is None for n in dup_group) <= 1
    assert [verdicts[n] for n in dup_group[1:]] == ["duplicate", "duplicate"]
    assert verdicts["weird_transcript_audio.wav"] == "duplicate"
    # Unrelated content stays.
    assert verdicts["clipped.wav"] is None and verdicts["very_long_5min.ogg"] is None


def test_identical_decoded_audio_is_an_exact_duplicate(rows: list[Any]) -> None:
    """With near dedup off, byte copies and lossless re-encodes are still caught (PCM sha1)."""
    verdicts = _dedup_verdicts(rows, config(dedup={"near": False}))
    assert verdicts["dup_copy_renamed.wav"] == verdicts["dup_reencoded.flac"] == "duplicate"
    assert verdicts["weird_transcript_audio.wav"] == "duplicate"
    assert verdicts["dup_original.wav"] is None and verdicts["truncated.wav"] is None


def test_repeated_row_with_invalid_metadata(results: dict[str, list[ProcessResult]]) -> None:
    second = _only(results, "dup_original.wav", 1)
    assert [(r.stage, r.reason) for r in second.rejects] == [("reader", "invalid_metadata")]
    assert "-1" in second.rejects[0].detail


def test_truncated_is_decoded_partially_and_flagged(
    results: dict[str, list[ProcessResult]],
) -> None:
    (meta,) = _metas(_only(results, "truncated.wav"))
    assert meta["stats"]["decoded_duration_s"] == pytest.approx(1.1, abs=0.01)  # not the header's
    assert meta["stats"]["declared_duration_s"] == 2.0 and "duration_mismatch" in meta["flags"]


def test_very_long_is_split_into_bounded_segments(results: dict[str, list[ProcessResult]]) -> None:
    o = _only(results, "very_long_5min.ogg")
    assert not o.rejects and 28 <= len(o.samples) <= 30
    max_s = POLICY.build.audio.max_segment_s
    assert all(m["duration"] <= max_s + 1e-6 for m in _metas(o))
    assert len({m["id"] for m in _metas(o)}) == len(o.samples)  # one key per segment


def _clipped_flags(rows: list[Any], **filters: Any) -> ProcessResult:
    ref = next(r for r in rows if isinstance(r, SampleRef) and r.source_id == "clipped.wav")
    proc = SampleProcessor(config(**NO_DEDUP, filters=filters), augment=False)
    try:
        return proc(ref, "train")
    finally:
        proc.close()


def test_clipped_is_kept_with_flag(
    results: dict[str, list[ProcessResult]], rows: list[Any]
) -> None:
    o = _only(results, "clipped.wav")
    ((sample, meta),) = [(s, s[META]) for s in o.samples]
    ratio = meta["stats"]["clip_ratio"]
    assert "clipping" in meta["flags"] and ratio > POLICY.build.filters.clip_flag_ratio
    wave, _ = sf.read(io.BytesIO(sample[AUDIO]), dtype="float32")
    # no headroom assumed: the stored audio respects the peak limit (16-bit flac rounding)
    assert np.abs(wave).max() <= POLICY.build.audio.peak_limit + 1e-4
    strict = _clipped_flags(rows, max_clip_ratio=0.01)
    assert not strict.samples and [r.reason for r in strict.rejects] == ["clipping"]


def test_clip_flag_ratio_decides_the_flag(rows: list[Any]) -> None:
    """FilterConfig.clip_flag_ratio, not a constant in the decoder, decides the flag."""
    (kept,) = _clipped_flags(rows).samples
    ratio = kept[META]["stats"]["clip_ratio"]
    (lenient,) = _clipped_flags(rows, clip_flag_ratio=ratio * 2).samples
    assert "clipping" not in lenient[META]["flags"]
    (eager,) = _clipped_flags(rows, clip_flag_ratio=ratio / 2).samples
    assert "clipping" in eager[META]["flags"]


def test_wrong_extension_decodes_by_content(results: dict[str, list[ProcessResult]]) -> None:
    (meta,) = _metas(_only(results, "wrong_extension_is_flac.mp3"))
    assert meta["stats"]["decoded_duration_s"] == pytest.approx(2.0, abs=0.01)


def test_weird_transcript_is_normalized(
    results: dict[str, list[ProcessResult]], corpora_root: Path
) -> None:
    (sample,) = _only(results, "weird_transcript_audio.wav").samples
    text = sample["txt"]
    assert text == sample[META]["texts"][0]["text"]
    assert not [c for c in text if unicodedata.category(c) in ("Cc",) or c in "\u200b\u202e\u202c"]
    for script in ("世界", "привет", "مرحبا", "नमस्ते", "👋🏽", "é"):
        assert script in text
    assert "  " not in text and text == unicodedata.normalize("NFC", text)
    json.dumps(text)  # storable
    sidecar = normalize_text(
        (corpora_root / "bad_inputs" / "weird_transcript.txt").read_text(encoding="utf-8")
    )
    assert "世界" in sidecar and "\x00" not in sidecar and "\u202e" not in sidecar
