"""Every filter reason, triggered on real audio/text and checked for its numbers and thresholds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dataprep.audio import AudioError, load_segments
from dataprep.core.config import AudioConfig, FilterConfig
from dataprep.core.sample import SampleRef
from dataprep.filters import (
    at_source,
    audio_flags,
    check_audio,
    check_segment,
    check_text,
    decode_reject,
    no_text_reject,
    resolve_language,
    text_flags,
)

SR = 16000


@pytest.fixture(scope="session")
def corpora(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("corpora_root")


@pytest.fixture(scope="module")
def clip(corpora: Path) -> Path:
    return sorted((corpora / "esc50_mini" / "audio").glob("*.wav"))[2]


def ref(path: Path | str = "x.wav", **kw) -> SampleRef:
    return SampleRef(corpus="t", source_id=Path(path).name, audio=str(path), **kw)


def seg_of(path: Path, **kw):
    return load_segments(ref(path, **kw), AudioConfig(), SR)[0]


def test_clean_clip_passes(clip: Path) -> None:
    s = seg_of(clip)
    assert check_audio(ref(clip), s, FilterConfig()) is None
    assert audio_flags(s, FilterConfig()) == ()


def test_too_short(clip: Path) -> None:
    s = seg_of(clip, start_s=0.5, end_s=0.7)
    r = check_audio(ref(clip), s, FilterConfig())
    assert r is not None and r.reason == "too_short" and r.stage == "filter" and "0.3" in r.detail
    assert check_audio(ref(clip), s, FilterConfig(min_duration_s=0.1)) is None


def test_too_long_source(clip: Path) -> None:
    s = seg_of(clip)
    r = check_audio(ref(clip), s, FilterConfig(max_source_duration_s=1.0))
    assert r is not None and r.reason == "too_long"


def test_silent_by_dbfs(clip: Path, tmp_path: Path) -> None:
    x, sr = sf.read(clip, dtype="float32")
    sf.write(tmp_path / "quiet.wav", x * np.float32(10 ** (-70 / 20)), sr, subtype="FLOAT")
    quiet = seg_of(tmp_path / "quiet.wav")
    loud = seg_of(clip)
    assert quiet.stats["dbfs"] == pytest.approx(loud.stats["dbfs"] - 70, abs=0.5)
    r = check_audio(ref(), quiet, FilterConfig(silence_dbfs=loud.stats["dbfs"] - 60))
    assert r is not None and r.reason == "silent"
    assert check_audio(ref(), quiet, FilterConfig(silence_dbfs=loud.stats["dbfs"] - 80)) is None
    # Near-silence is not blown up by loudness normalization.
    assert np.abs(quiet.wave).max() < 1e-2


def test_clipping_reject_and_flag(corpora: Path) -> None:
    s = seg_of(corpora / "bad_inputs" / "clipped.wav")
    ratio = s.stats["clip_ratio"]
    r = check_audio(ref(), s, FilterConfig(max_clip_ratio=ratio / 2))
    assert r is not None and r.reason == "clipping" and f"{ratio:.2%}" in r.detail
    assert check_audio(ref(), s, FilterConfig(max_clip_ratio=ratio * 2)) is None
    assert audio_flags(s, FilterConfig(clip_flag_ratio=ratio / 2)) == ("clipping",)
    assert audio_flags(s, FilterConfig(clip_flag_ratio=ratio * 2)) == ()


def test_decode_errors_become_rows(corpora: Path) -> None:
    with pytest.raises(AudioError) as err:
        load_segments(ref(corpora / "bad_inputs" / "not_audio.wav"), AudioConfig(), SR)
    row = decode_reject(ref(corpora / "bad_inputs" / "not_audio.wav"), err.value)
    assert (row.stage, row.reason) == ("decode", "not_audio") and row.as_row()[
        "source"
    ] == "t:not_audio.wav"
    # Anything else a decoder raises is a reasoned row too, never a crashed task.
    other = decode_reject(ref("y.wav"), RuntimeError("codec exploded"))
    assert (other.stage, other.reason) == ("decode", "decode_error")
    assert other.detail == "RuntimeError: codec exploded"


def test_check_segment_runs_audio_then_text_checks(clip: Path) -> None:
    s = seg_of(clip)
    assert check_segment(ref(clip), s, "a dog barks", "en", FilterConfig()) is None
    short = check_segment(ref(clip), s, "ab", None, FilterConfig(min_text_chars=5))
    assert short is not None and short.reason == "short_text"
    both = check_segment(ref(clip), s, "ab", None, FilterConfig(min_text_chars=5, silence_dbfs=0))
    assert both is not None and both.reason == "silent"  # audio first


def test_reject_helpers_name_their_source() -> None:
    r = no_text_reject(ref("z.wav"))
    assert (r.stage, r.reason, r.source) == ("filter", "no_text", "t:z.wav") and r.detail
    seg_r = at_source(r, "t:z.wav@0.00-10.00")
    assert seg_r.source == "t:z.wav@0.00-10.00" and seg_r.reason == "no_text"


ASR = (("task", "asr"),)
CAPTION = (("task", "caption"),)


@pytest.mark.parametrize(
    ("text", "duration_s", "extra", "labels", "cfg", "reason"),
    [
        ("", 2.0, ASR, (), FilterConfig(), "empty_text"),
        ("   ", 2.0, (), (), FilterConfig(), "empty_text"),
        ("", 2.0, (), ("dog",), FilterConfig(), None),  # labels make the text later
        ("", 2.0, (), (), FilterConfig(require_text=False), None),
        ("ok", 2.0, (), (), FilterConfig(min_text_chars=5), "short_text"),
        ("!!! ??? ... ###", 2.0, (), (), FilterConfig(), "garbage_text"),
        ("\U0001f600\U0001f600\U0001f600 \U0001f3b5", 2.0, (), (), FilterConfig(), "garbage_text"),
        ("hi", 10.0, ASR, (), FilterConfig(), "chars_per_s_low"),
        ("x" * 200, 2.0, ASR, (), FilterConfig(), "chars_per_s_high"),
        ("x" * 200, 2.0, (), (), FilterConfig(), "chars_per_s_high"),  # no task: a transcript
        ("x" * 200, 2.0, CAPTION, (), FilterConfig(), None),  # captions are not paced like speech
        ("The coffee is still hot, so please be careful.", 3.0, ASR, (), FilterConfig(), None),
        ("\u4f60\u597d\uff0c\u4e16\u754c", 1.5, ASR, (), FilterConfig(), None),
    ],
)
def test_check_text(text, duration_s, extra, labels, cfg, reason) -> None:
    r = check_text(ref(extra=extra, labels=labels), text, None, duration_s, cfg)
    assert (r.reason if r else None) == reason
    if r:
        assert r.stage == "filter" and r.detail


def test_language_mismatch_reject_flag_ignore() -> None:
    german = "Der Kaffee ist noch heiß, sei bitte vorsichtig."
    r_en = ref(lang="en")
    lang, detected = resolve_language(r_en, german)
    assert lang == "en" and detected == "de"
    rej = check_text(r_en, german, detected, 3.0, FilterConfig(lang_mismatch="reject"))
    assert rej is not None and rej.reason == "lang_mismatch" and "'de'" in rej.detail
    assert check_text(r_en, german, detected, 3.0, FilterConfig(lang_mismatch="flag")) is None
    assert text_flags(r_en, detected, FilterConfig(lang_mismatch="flag")) == ("lang_mismatch",)
    assert text_flags(r_en, detected, FilterConfig(lang_mismatch="ignore")) == ()
    # Agreeing, unsure (short) and unlabeled texts raise nothing; unlabeled ones get the guess.
    assert resolve_language(replace(r_en, lang="de"), german) == ("de", "de")
    assert resolve_language(r_en, "ja")[1] is None
    assert resolve_language(ref(), german)[0] == "de"
