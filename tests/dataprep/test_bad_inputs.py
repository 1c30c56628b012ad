"""Every file of bad_inputs gets the outcome its README asks for (one test per file).

The manifest is read by the real NeMo reader and each row goes through the real stages
(load_segments -> check_audio -> normalize_text -> check_text), in manifest order; then the
kept samples go through DedupIndex. The fixture reuses one utterance in several files
(truncated.wav is its first 1.1 s, wrong_extension_is_flac.mp3 its first 2.0 s,
weird_transcript_audio.wav has the very same samples as dup_original.wav), so a content dedup
pass is tested on its own: per-file expectations are checked before it.
The 5-minute clip is generated at test time (it is not bundled).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dataprep.audio import AudioError, Segment, load_segments
from dataprep.core.config import AudioConfig, CorpusConfig, FilterConfig
from dataprep.corpora import read_corpus
from dataprep.dedup import DedupIndex, audio_fingerprint, pcm_sha1
from dataprep.filters import audio_error_reject, audio_flags, check_audio, check_text
from dataprep.core.sample import Reject, SampleRef, sample_key
from dataprep.text import normalize_text

_spec = importlib.util.spec_from_file_location(
    "layout_builders", Path(__file__).resolve().parents[1] / "fixtures" / "layouts" / "builders.py"
)
layouts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(layouts)

SR = 16000
# The defaults are the README's policy: clipped.wav (~8 % of samples at full scale) is kept
# with a flag because FilterConfig rejects only above 20 %.
POLICY = FilterConfig()


@pytest.fixture(scope="session")
def corpora(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("corpora_root")


@dataclass
class Outcome:
    samples: list[tuple[Segment, str, tuple[str, ...]]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def _process(ref: SampleRef, cfg: FilterConfig) -> Outcome:
    out = Outcome()
    try:
        segments = load_segments(ref, AudioConfig(), SR)
    except AudioError as err:
        out.rejects.append(audio_error_reject(ref, err))
        return out
    text = normalize_text(ref.text or "", ref.lang)
    for seg in segments:
        rej = check_audio(ref, seg, cfg) or check_text(ref, text, None, seg.duration_s, cfg)
        if rej is not None:
            out.rejects.append(rej)
        else:
            out.samples.append((seg, text, audio_flags(seg, cfg)))
    return out


@pytest.fixture(scope="module")
def results(corpora: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Outcome]]:
    root = tmp_path_factory.mktemp("bad_inputs")
    shutil.copytree(corpora / "bad_inputs", root, dirs_exist_ok=True)
    if not (root / "very_long_5min.ogg").exists():
        shutil.copy(
            layouts.long_clip(corpora, tmp_path_factory.getbasetemp()), root / "very_long_5min.ogg"
        )
    by_file: dict[str, list[Outcome]] = {}
    n_rows = 0
    for item in read_corpus(CorpusConfig(name="bad", reader="nemo", root=str(root))):
        n_rows += 1
        if isinstance(item, Reject):
            name = item.source.split(":", 1)[1].split(" ")[0]
            by_file.setdefault(name, []).append(Outcome(rejects=[item]))
        else:
            by_file.setdefault(item.source_id, []).append(_process(item, POLICY))
    manifest = (root / "manifest.jsonl").read_text().splitlines()
    assert n_rows == len(manifest)  # every row accounted for: a sample or exactly one reject
    for outcomes in by_file.values():
        for o in outcomes:
            assert o.samples or len(o.rejects) == 1
    return by_file


def _only(results: dict[str, list[Outcome]], name: str, index: int = 0) -> Outcome:
    return results[name][index]


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
    results: dict[str, list[Outcome]], name: str, stage: str, reason: str
) -> None:
    o = _only(results, name)
    assert not o.samples
    assert [(r.stage, r.reason) for r in o.rejects] == [(stage, reason)]
    assert o.rejects[0].detail  # a sentence for the humans reading rejects.parquet


def test_dedup_reduces_the_dup_group_to_one(results: dict[str, list[Outcome]]) -> None:
    """Kept samples in manifest order through the dedup index: copies point at one original."""
    index = DedupIndex()
    verdicts: dict[str, str | None] = {}
    for name, outcomes in results.items():
        for seg, _, _ in outcomes[0].samples:
            key = sample_key("bad", name, (seg.start_s, seg.end_s))
            pcm, fp = pcm_sha1(seg.wave), audio_fingerprint(seg.wave, SR)
            match = index.match(pcm, fp)
            verdicts.setdefault(name, match.kind if match else None)
            index.add(key, pcm, fp)
    dup_group = ["dup_original.wav", "dup_copy_renamed.wav", "dup_reencoded.flac"]
    assert sum(verdicts[n] is None for n in dup_group) <= 1  # reduced to at most one item
    # Identical decoded samples (byte copy, lossless re-encode) are exact matches.
    assert verdicts["dup_copy_renamed.wav"] == verdicts["dup_reencoded.flac"] == "exact"
    assert verdicts["weird_transcript_audio.wav"] == "exact"
    # Unrelated content stays.
    assert verdicts["clipped.wav"] is None and verdicts["very_long_5min.ogg"] is None


def test_repeated_row_with_invalid_metadata(results: dict[str, list[Outcome]]) -> None:
    second = _only(results, "dup_original.wav", 1)
    assert [(r.stage, r.reason) for r in second.rejects] == [("reader", "invalid_metadata")]
    assert "-1" in second.rejects[0].detail


def test_truncated_is_decoded_partially_and_flagged(results: dict[str, list[Outcome]]) -> None:
    ((seg, _, flags),) = _only(results, "truncated.wav").samples
    assert seg.stats["decoded_duration_s"] == pytest.approx(1.1, abs=0.01)  # not the header's 2.0
    assert seg.stats["declared_duration_s"] == 2.0 and "duration_mismatch" in flags


def test_very_long_is_split_into_bounded_segments(results: dict[str, list[Outcome]]) -> None:
    o = _only(results, "very_long_5min.ogg")
    assert not o.rejects and 28 <= len(o.samples) <= 30
    assert all(seg.duration_s <= AudioConfig().max_segment_s + 1e-6 for seg, _, _ in o.samples)


def test_clipped_is_kept_with_flag(results: dict[str, list[Outcome]], corpora: Path) -> None:
    ((seg, _, flags),) = _only(results, "clipped.wav").samples
    assert "clipping" in flags and seg.stats["clip_ratio"] > POLICY.clip_flag_ratio
    assert abs(seg.wave).max() <= AudioConfig().peak_limit + 1e-6  # no headroom assumed
    strict = check_audio(
        SampleRef("bad", "clipped.wav", ""), seg, FilterConfig(max_clip_ratio=0.01)
    )
    assert strict is not None and strict.reason == "clipping"


def test_wrong_extension_decodes_by_content(results: dict[str, list[Outcome]]) -> None:
    ((seg, _, _),) = _only(results, "wrong_extension_is_flac.mp3").samples
    assert seg.stats["decoded_duration_s"] == pytest.approx(2.0, abs=0.01)


def test_weird_transcript_is_normalized(results: dict[str, list[Outcome]], corpora: Path) -> None:
    ((_, text, _),) = _only(results, "weird_transcript_audio.wav").samples
    assert not [c for c in text if unicodedata.category(c) in ("Cc",) or c in "\u200b\u202e\u202c"]
    for script in ("世界", "привет", "مرحبا", "नमस्ते", "👋🏽", "é"):
        assert script in text
    assert "  " not in text and text == unicodedata.normalize("NFC", text)
    json.dumps(text)  # storable
    sidecar = normalize_text(
        (corpora / "bad_inputs" / "weird_transcript.txt").read_text(encoding="utf-8")
    )
    assert "世界" in sidecar and "\x00" not in sidecar and "\u202e" not in sidecar
