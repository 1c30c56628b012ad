"""Quality filters: each check returns ``None`` (pass) or one ``Reject`` with a reason and numbers.

Reasons (stage ``filter``): ``too_short``, ``too_long``, ``silent``, ``clipping``,
``empty_text``, ``short_text``, ``garbage_text``, ``chars_per_s_low``, ``chars_per_s_high``,
``lang_mismatch``, ``no_text``. Decode-time reasons (``missing_file``, ``not_audio`` ...) come
from :class:`dataprep.audio.AudioError` and are turned into rows by :func:`decode_reject`.
Conditions that keep a sample but mark it (clipping at or above ``clip_flag_ratio`` but below the
reject ratio, a language the detector disagrees with under ``lang_mismatch: flag``) are returned
by the ``*_flags`` helpers. These are the functions :class:`dataprep.process.SampleProcessor`
runs; the config values decide, nothing restates them.
"""

from __future__ import annotations

from dataclasses import replace

from dataprep.audio import AudioError, Segment
from dataprep.core.config import FilterConfig
from dataprep.core.lang import same_language
from dataprep.core.sample import Reject, SampleRef, is_transcript_task, ref_source
from dataprep.text import detect_language, letter_ratio

LANG_MIN_CONFIDENCE = 0.8  # below this the detector is not trusted to contradict the corpus
LANG_MIN_CHARS = 12  # shorter texts are too ambiguous for a mismatch verdict
GARBAGE_LETTER_RATIO = 0.5


def _reject(ref: SampleRef, reason: str, detail: str) -> Reject:
    return Reject(
        source=ref_source(ref), stage="filter", reason=reason, detail=detail, corpus=ref.corpus
    )


def decode_reject(ref: SampleRef, err: Exception) -> Reject:
    """The reject row of an input that could not be decoded: an :class:`AudioError` keeps its
    reason; anything else is ``decode_error`` with the exception (one bad input never kills a
    task)."""
    if isinstance(err, AudioError):
        reason, detail = err.reason, err.detail
    else:
        reason, detail = "decode_error", f"{type(err).__name__}: {err}"
    return Reject(
        source=ref_source(ref), stage="decode", reason=reason, detail=detail, corpus=ref.corpus
    )


def no_text_reject(ref: SampleRef) -> Reject:
    """A sample left without any text (after augmentation) while ``require_text`` is set."""
    return _reject(ref, "no_text", "no caption, transcript or label text")


def at_source(rej: Reject, source: str) -> Reject:
    """``rej`` naming ``source`` (a segment of its input, ``<corpus>:<id>@<start>-<end>``)."""
    return rej if rej.source == source else replace(rej, source=source)


def check_audio(ref: SampleRef, seg: Segment, cfg: FilterConfig) -> Reject | None:
    """too_short / too_long / silent / clipping, from the segment and its source's stats."""
    duration = float(seg.stats.get("duration_s", seg.end_s - seg.start_s))
    if duration < cfg.min_duration_s:
        return _reject(ref, "too_short", f"{duration:.3f} s < min_duration_s {cfg.min_duration_s}")
    source_s = seg.stats.get("source_duration_s", 0.0)
    if source_s > cfg.max_source_duration_s:
        return _reject(
            ref,
            "too_long",
            f"source is {source_s:.1f} s > max_source_duration_s {cfg.max_source_duration_s}",
        )
    dbfs = seg.stats.get("dbfs")
    if dbfs is not None and dbfs < cfg.silence_dbfs:
        return _reject(
            ref, "silent", f"segment RMS {dbfs:.1f} dBFS < silence_dbfs {cfg.silence_dbfs}"
        )
    clip = seg.stats.get("clip_ratio", 0.0)
    if clip > cfg.max_clip_ratio:
        return _reject(
            ref,
            "clipping",
            f"{clip:.2%} of samples at full scale > max_clip_ratio {cfg.max_clip_ratio:.2%}",
        )
    return None


def audio_flags(seg: Segment, cfg: FilterConfig) -> tuple[str, ...]:
    """Kept-but-flagged audio conditions: the decoder's (``seg.flags``) plus ``clipping`` when
    the clip ratio reaches ``cfg.clip_flag_ratio``."""
    flags = set(seg.flags)
    if seg.stats.get("clip_ratio", 0.0) >= cfg.clip_flag_ratio:
        flags.add("clipping")
    return tuple(sorted(flags))


def check_segment(
    ref: SampleRef, seg: Segment, text: str | None, lang: str | None, cfg: FilterConfig
) -> Reject | None:
    """The audio checks, then the text checks against the segment's duration."""
    rej = check_audio(ref, seg, cfg)
    if rej is None:
        rej = check_text(ref, text, lang, seg.end_s - seg.start_s, cfg)
    return rej


def is_transcript(ref: SampleRef) -> bool:
    """Whether ``ref``'s text (if any) stands for what is said in all of its audio: true unless
    the corpus declares a caption-like task (``CAPTION_TASKS``). A NeMo manifest without
    ``task`` is transcripts, so a 5,000-character "transcript" of 2 s is rejected."""
    return is_transcript_task(ref.extra_dict().get("task"))


def check_text(
    ref: SampleRef, text: str | None, lang: str | None, duration_s: float, cfg: FilterConfig
) -> Reject | None:
    """Text checks on the *normalized* text. ``lang`` is the detected language (or None).

    A corpus whose items carry labels but no text (ESC-50) passes when ``require_text`` is
    false or labels exist: the text comes later from templates.
    """
    body = (text or "").strip()
    if not body:
        if cfg.require_text and not ref.labels:
            return _reject(
                ref, "empty_text", "no transcript/caption and no labels to build one from"
            )
        return None
    n = len(body)
    if n < cfg.min_text_chars:
        return _reject(ref, "short_text", f"{n} characters < min_text_chars {cfg.min_text_chars}")
    ratio = letter_ratio(body)
    if ratio < GARBAGE_LETTER_RATIO:
        return _reject(ref, "garbage_text", f"only {ratio:.0%} of characters are letters or digits")
    if is_transcript(ref) and duration_s > 0:
        cps = n / duration_s
        if cps < cfg.min_chars_per_s:
            return _reject(
                ref,
                "chars_per_s_low",
                f"{cps:.1f} chars/s < {cfg.min_chars_per_s} ({n} chars in {duration_s:.2f} s)",
            )
        if cps > cfg.max_chars_per_s:
            return _reject(
                ref,
                "chars_per_s_high",
                f"{cps:.1f} chars/s > {cfg.max_chars_per_s} ({n} chars in {duration_s:.2f} s)",
            )
    if cfg.lang_mismatch == "reject" and lang and ref.lang and not same_language(lang, ref.lang):
        return _reject(ref, "lang_mismatch", f"corpus says {ref.lang!r}, text detected as {lang!r}")
    return None


def resolve_language(
    ref: SampleRef, text: str | None, cfg: FilterConfig | None = None
) -> tuple[str | None, str | None]:
    """``(language for the sample, detected language worth comparing or None)``.

    The corpus's language wins; the detector fills it in when missing and is passed on as the
    second value only when confident enough to contradict the corpus (long text, high score).
    The detector runs only where its answer decides something: a missing corpus language, or a
    text long enough for a mismatch verdict that ``cfg.lang_mismatch`` does not ignore.
    """
    body = (text or "").strip()
    if not body:
        return ref.lang, None
    if ref.lang is not None and (
        len(body) < LANG_MIN_CHARS or (cfg is not None and cfg.lang_mismatch == "ignore")
    ):
        return ref.lang, None
    detected, conf = detect_language(body)
    if ref.lang is None:
        return (detected if conf >= 0.5 else None), detected
    if len(body) >= LANG_MIN_CHARS and conf >= LANG_MIN_CONFIDENCE:
        return ref.lang, detected
    return ref.lang, None


def text_flags(ref: SampleRef, lang: str | None, cfg: FilterConfig) -> tuple[str, ...]:
    if cfg.lang_mismatch == "flag" and lang and ref.lang and not same_language(lang, ref.lang):
        return ("lang_mismatch",)
    return ()
