"""Property-based robustness (hypothesis): whatever the input, the build never crashes or hangs.

Inputs are generated, not hand-picked: audio bytes (valid files at odd rates and channel counts,
truncated files, random bytes, headers declaring absurd sizes/rates/channels, audio magic
followed by junk), reader rows (odd unicode, wrong types, paths that escape the root) and raw
manifest lines (invalid UTF-8, JSON that is not an object, blank-looking bytes). They go through
the real NeMo reader and the real ``SampleProcessor`` that each shard task runs, configured
like a build (``configs/test_small.yaml``, augmentation on). The properties:

* every manifest line ends as one ``SampleRef`` or exactly one reader ``Reject``;
* every ``SampleRef`` ends as samples, or as exactly one ``Reject``, with a reason from the
  documented vocabulary below (a short clip is one segment, so "samples or one reject" is exact);
* no exception escapes, and each input finishes within ``PER_INPUT_S`` (a watchdog turns a hang
  into a failure instead of a stuck suite).

Examples are derandomized (the same inputs every run, so CI is not flaky) and bounded so the
file runs in well under a minute.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import struct
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dataprep.core.config import CorpusConfig
from dataprep.core.sample import Reject, SampleRef
from dataprep.corpora import read_corpus
from dataprep.process import SampleProcessor
from model.config import load_config  # the whole experiment file, as build_shards reads it

REPO = Path(__file__).resolve().parents[2]
PER_INPUT_S = 20.0  # generous: 2 shared cores; a normal input takes well under 0.5 s

# The reject vocabulary (reader, decode, filter, dedup stages), as documented in
# dataprep/corpora/_common.py, dataprep/audio.py, dataprep/filters.py and dataprep/process.py.
READER_REASONS = {
    "invalid_metadata",
    "path_escape",
    "missing_file",
    "duplicate_row",
    "unreadable_metadata",
}
PROCESS_REASONS = {
    # decode
    "missing_file",
    "empty_file",
    "read_error",
    "not_audio",
    "decode_error",
    "empty_audio",
    "non_finite",
    "bad_region",
    "bad_sample_rate",
    "transcript_too_long",
    # filter
    "too_short",
    "too_long",
    "silent",
    "clipping",
    "empty_text",
    "short_text",
    "garbage_text",
    "chars_per_s_low",
    "chars_per_s_high",
    "lang_mismatch",
    "no_text",
    # dedup
    "duplicate",
    "eval_overlap",
}

SETTINGS = settings(
    max_examples=80,
    deadline=None,  # time is bounded per input by the watchdog and asserted explicitly
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class Hang(BaseException):
    """Raised by the watchdog; a BaseException so no ``except Exception`` boundary eats it."""


@contextmanager
def watchdog(seconds: float):  # type: ignore[no-untyped-def]
    def fire(signum, frame):  # type: ignore[no-untyped-def]
        raise Hang(f"input still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextmanager
def processor():  # type: ignore[no-untyped-def]
    """A fresh processor per example, as a shard task builds one (cheap: ~5 ms): dedup state
    from earlier examples would otherwise turn most later inputs into ``duplicate``."""
    p = SampleProcessor(load_config(REPO / "configs" / "test_small.yaml"), augment=True)
    try:
        yield p
    finally:
        p.close()


def run_one(proc: SampleProcessor, ref: SampleRef) -> tuple[int, list[Reject]]:
    t0 = time.perf_counter()
    with watchdog(PER_INPUT_S):
        res = proc(ref, "train")
    elapsed = time.perf_counter() - t0
    assert elapsed < PER_INPUT_S, f"{ref.source_id}: {elapsed:.1f} s"
    reasons = {r.reason for r in res.rejects}
    assert reasons <= PROCESS_REASONS, f"unknown reject reasons {reasons - PROCESS_REASONS}"
    event("samples" if res.samples else f"reject:{res.rejects[0].reason}" if res.rejects else "-")
    if res.samples:
        assert not res.rejects, res.rejects
        for s in res.samples:
            assert np.isfinite(s["mel.npy"].astype(np.float32)).all()
            json.dumps(s["json"])  # the sample JSON is serializable as is
    else:
        assert len(res.rejects) == 1, res.rejects
    return len(res.samples), res.rejects


# ------------------------------------------------------------------------------ audio bytes

RATES = st.one_of(
    st.sampled_from([16000, 44100, 48000, 8000, 11025, 22050, 96000]),
    st.sampled_from([13101, 44101, 22051, 999, 1_000_001]),  # coprime with 16 kHz, out of range
    st.integers(1, 400_000),
)


@st.composite
def wav_bytes(draw: st.DrawFn) -> bytes:
    sr = draw(RATES)
    channels = draw(st.integers(1, 8))
    seconds = draw(st.one_of(st.floats(0.5, 2.5), st.floats(0.0, 2.5)))
    frames = min(int(seconds * sr), 60_000)  # bounded memory per example
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(
        st.sampled_from(["tone", "noise", "tone", "noise", "zeros", "dc", "clipped", "nan", "tiny"])
    )
    x = {
        "noise": lambda: rng.normal(0, 0.1, (frames, channels)),
        "tone": lambda: np.sin(np.arange(frames)[:, None] * 0.05) * np.ones(channels) * 0.5,
        "zeros": lambda: np.zeros((frames, channels)),
        "dc": lambda: np.full((frames, channels), 0.4),
        "clipped": lambda: np.clip(rng.normal(0, 3, (frames, channels)), -1, 1),
        "nan": lambda: np.where(rng.random((frames, channels)) < 0.01, np.nan, 0.1),
        "tiny": lambda: rng.normal(0, 1e-6, (frames, channels)),
    }[kind]()
    fmt = draw(st.sampled_from(["WAV", "FLAC", "OGG"])) if kind != "nan" else "WAV"
    subtype = {"WAV": draw(st.sampled_from(["PCM_16", "FLOAT", "PCM_U8"])), "FLAC": "PCM_16"}
    if fmt == "FLAC" and not 1 <= sr <= 655_350:
        fmt = "WAV"
    if fmt == "OGG" and not 8000 <= sr <= 192_000:
        fmt = "WAV"
    buf = io.BytesIO()
    try:
        sf.write(buf, x.astype(np.float32), sr, format=fmt, subtype=subtype.get(fmt, "VORBIS"))
    except (sf.LibsndfileError, ValueError, RuntimeError):
        buf = io.BytesIO()
        sf.write(buf, np.nan_to_num(x).astype(np.float32), sr, format="WAV", subtype="FLOAT")
    data = buf.getvalue()
    if draw(st.integers(0, 3)) == 0 and len(data) > 8:
        data = data[: draw(st.integers(1, len(data) - 1))]  # truncated mid-file
    return data


@st.composite
def huge_header(draw: st.DrawFn) -> bytes:
    """A RIFF/WAVE header declaring whatever it likes, followed by a little real data."""
    channels = draw(st.sampled_from([0, 1, 2, 255, 65535]))
    sr = draw(st.sampled_from([0, 1, 7, 16000, 44101, 2**31 - 1, 2**32 - 1]))
    bits = draw(st.sampled_from([0, 8, 16, 24, 32, 64, 65535]))
    fmt_tag = draw(st.sampled_from([1, 3, 0xFFFE, 0x55, 0]))
    data_size = draw(st.sampled_from([0, 100, 2**31 - 1, 2**32 - 1]))
    block = max(1, channels * max(bits, 8) // 8) & 0xFFFF
    fmt = struct.pack(
        "<HHIIHH", fmt_tag, channels, sr, (sr * block) & 0xFFFFFFFF, block, bits & 0xFFFF
    )
    body = draw(st.binary(min_size=0, max_size=4000))
    riff_size = draw(st.sampled_from([4 + 8 + 16 + 8 + len(body), 2**32 - 1, 0]))
    return (
        b"RIFF" + struct.pack("<I", riff_size) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
        + b"data" + struct.pack("<I", data_size) + body
    )  # fmt: skip


MAGICS = [b"RIFF", b"fLaC", b"OggS", b"ID3\x03", b"\xff\xfb", b"\x1aE\xdf\xa3", b"FORM"]
AUDIO_BYTES = st.one_of(
    wav_bytes(),  # listed three times: most inputs should be decodable, to reach the filters
    wav_bytes(),
    wav_bytes(),
    huge_header(),
    st.binary(min_size=0, max_size=3000),
    st.tuples(st.sampled_from(MAGICS), st.binary(max_size=3000)).map(lambda t: t[0] + t[1]),
)
TEXTS = st.one_of(
    st.none(),
    st.sampled_from(["a dog barks twice", "Der Kaffee ist noch heiß.", "下雨了", "ok"]),
    st.text(max_size=200),  # any code point: combining marks, RTL, controls, emoji, NUL
    st.text(alphabet="\u200b\u200f\u0301\ufeff \t\r", max_size=30),  # invisible-only
    st.just("x" * 5000),
)
LANGS = st.one_of(st.none(), st.sampled_from(["en", "de", "zh", "xx", ""]), st.text(max_size=8))


@settings(SETTINGS, max_examples=150)
@given(
    data=AUDIO_BYTES,
    text=TEXTS,
    lang=LANGS,
    labels=st.lists(st.text(max_size=20), max_size=3).map(tuple),
    region=st.one_of(
        st.none(),
        st.none(),
        st.none(),
        st.tuples(st.floats(-5, 5), st.one_of(st.none(), st.floats(-5, 10))),
    ),
    declared=st.one_of(st.none(), st.floats(0, 1e6)),
)
def test_any_audio_bytes_end_as_samples_or_one_reject(
    tmp_path: Path, data, text, lang, labels, region, declared
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / f"in-{abs(hash(data)) % 10**12}.wav"
    path.write_bytes(data)
    start, end = region if region is not None else (None, None)
    ref = SampleRef(
        corpus="prop",
        source_id=path.name,
        audio=str(path),
        text=text,
        lang=lang or None,
        labels=labels,
        start_s=start,
        end_s=end,
        duration_s=declared,
        extra=(("task", "asr"),) if text and len(text) % 2 else (),
    )
    with processor() as proc:
        run_one(proc, ref)


# ------------------------------------------------------------------- manifest lines and rows


@pytest.fixture(scope="module")
def manifest_root(tmp_path_factory: pytest.TempPathFactory, corpora_root: Path) -> Path:
    root = tmp_path_factory.mktemp("prop_nemo")
    src = corpora_root / "nemo_manifest_mini" / "audio"
    for name in ("utt_000_en.wav", "utt_001_en.flac", "utt_002_de.mp3"):
        shutil.copy(src / name, root / name)
    (root / "junk.wav").write_bytes(b"not audio" * 100)
    (root / "empty.wav").write_bytes(b"")
    return root


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
GOOD_PATHS = st.sampled_from(["utt_000_en.wav", "utt_001_en.flac", "utt_002_de.mp3"])
PATHS = st.one_of(
    GOOD_PATHS,
    GOOD_PATHS,
    st.sampled_from(
        [
            "utt_000_en.wav",
            "utt_001_en.flac",
            "utt_002_de.mp3",
            "junk.wav",
            "empty.wav",
            "missing.wav",
            "../outside.wav",
            "/etc/passwd",
            "http://127.0.0.1:1/x.wav",
            "sub/../utt_000_en.wav",
            "",
            " ",
        ]
    ),
    st.text(max_size=30),
    SCALARS,
)
ROWS = st.fixed_dictionaries(
    {"audio_filepath": PATHS},
    optional={
        "text": st.one_of(
            st.sampled_from(["my brother takes the bus", "Der Kaffee ist heiß."]),
            SCALARS,
            st.just("x" * 5000),
            st.lists(SCALARS, max_size=2),
        ),
        "duration": st.one_of(SCALARS, st.sampled_from(["nan", "inf", "-1", "1e400", "2.5"])),
        "offset": st.one_of(SCALARS, st.floats(-2, 4)),
        "lang": st.one_of(SCALARS, LANGS),
        "labels": st.one_of(SCALARS, st.lists(SCALARS, max_size=3)),
        "speaker": SCALARS,
        "task": st.sampled_from(["asr", "caption", "kws", "", "whatever"]),
        "extra": st.dictionaries(st.text(max_size=5), SCALARS, max_size=2),
    },
)
VALID_ROWS = st.fixed_dictionaries(
    {
        "audio_filepath": GOOD_PATHS,
        "text": st.one_of(st.sampled_from(["my brother takes the bus"]), st.text(max_size=60)),
        "duration": st.floats(0.5, 5.0),
    },
    optional={
        "offset": st.floats(0, 2),
        "lang": LANGS,
        "task": st.sampled_from(["asr", "caption"]),
    },
)
LINES = st.one_of(
    VALID_ROWS.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8")),
    ROWS.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8")),
    ROWS.map(lambda r: json.dumps(r).encode("utf-8")),
    st.binary(min_size=1, max_size=200).filter(lambda b: b"\n" not in b),  # any bytes
    st.sampled_from([b"[1, 2]", b'"a string"', b"null", b"{", b'{"audio_filepath": 3}']),
)


def _blank(line: bytes) -> bool:
    try:
        return not line.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


@SETTINGS
@given(lines=st.lists(LINES, min_size=1, max_size=6))
def test_any_manifest_lines_end_as_refs_or_one_reject_each(
    manifest_root: Path, lines: list[bytes]
) -> None:
    # A manifest per example (same folder: audio paths stay valid); nothing else reads it.
    (manifest_root / "m.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    cfg = CorpusConfig(name="prop", reader="nemo", root=str(manifest_root), splits=("m",))
    with watchdog(PER_INPUT_S):
        items = list(read_corpus(cfg))
    refs = [i for i in items if isinstance(i, SampleRef)]
    rejects = [i for i in items if isinstance(i, Reject)]
    assert len(refs) + len(rejects) == len(items)
    assert len(items) == sum(not _blank(line) for line in lines)
    assert {r.reason for r in rejects} <= READER_REASONS, rejects
    with processor() as proc:
        for ref in refs:
            hash(ref)  # frozen and hashable, whatever the row held
            run_one(proc, ref)
