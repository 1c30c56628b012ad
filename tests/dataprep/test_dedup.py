"""Exact/near duplicates and eval decontamination on real audio.

Robustness copies are made at test time from bundled clips: an MP3 re-encode, a -6 dB copy and
a 44.1 kHz resampled copy must match their original through the whole audio stage; clips of
different sounds/speech must not. (The ESC-style fixture renders some classes from the same
looped SoundFont sample, which really are near-duplicates, so "different" pairs are taken
across classes.)
"""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dataprep.audio import load_segments, resample
from dataprep.core.config import AudioConfig, CorpusConfig
from dataprep.core.sample import SampleRef, sample_key
from dataprep.corpora import read_corpus
from dataprep.dedup import (
    DedupIndex,
    TextDedupIndex,
    audio_fingerprint,
    build_eval_index,
    eval_overlap_reject,
    fingerprint_eval_corpus,
    fingerprint_from_hex,
    fingerprint_similarity,
    fingerprint_to_hex,
    pcm_sha1,
)

SR = 16000
THRESHOLD = 0.85  # DedupConfig.near_threshold default


@pytest.fixture(scope="session")
def corpora(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("corpora_root")


def _distinct_clips(corpora: Path, n_esc: int = 8, n_speech: int = 6) -> list[Path]:
    """ESC clips of distinct categories plus speech clips of distinct speakers/languages."""
    with open(corpora / "esc50_mini" / "meta" / "esc50.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_cat: dict[str, str] = {}
    for row in rows:
        by_cat.setdefault(row["category"], row["filename"])
    esc = [corpora / "esc50_mini" / "audio" / f for _, f in sorted(by_cat.items())][:n_esc]
    speech = sorted((corpora / "nemo_manifest_mini" / "audio").iterdir())[:n_speech]
    return esc + speech


def _segment(path: Path) -> np.ndarray:
    ref = SampleRef(corpus="t", source_id=path.name, audio=str(path))
    return load_segments(ref, AudioConfig(), SR)[0].wave


def _variants(path: Path, out: Path) -> dict[str, Path]:
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    made = {}
    made["mp3"] = out / f"{path.stem}.mp3"
    sf.write(made["mp3"], x, sr, format="MP3")
    made["minus6db"] = out / f"{path.stem}.m6.wav"
    sf.write(made["minus6db"], x * np.float32(10 ** (-6 / 20)), sr, subtype="PCM_16")
    made["resampled"] = out / f"{path.stem}.44k.flac"
    sf.write(made["resampled"], np.clip(resample(x, sr, 44100), -1, 1), 44100)
    return made


@pytest.fixture(scope="module")
def robustness(corpora: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("variants")
    clips = _distinct_clips(corpora)
    originals = {p.name: _segment(p) for p in clips}
    variants = {p.name: {k: _segment(v) for k, v in _variants(p, out).items()} for p in clips}
    return {"originals": originals, "variants": variants}


def test_pcm_sha1_is_content_hash(corpora: Path) -> None:
    a = _segment(corpora / "bad_inputs" / "dup_original.wav")
    b = _segment(corpora / "bad_inputs" / "dup_reencoded.flac")
    assert pcm_sha1(a) == pcm_sha1(b) == pcm_sha1(a.astype(np.float64))
    c = a.copy()
    c[100] = np.nextafter(c[100], np.float32(1))
    assert pcm_sha1(c) != pcm_sha1(a) and len(pcm_sha1(a)) == 40


def test_fingerprint_is_small_and_storable(robustness: dict) -> None:
    wave = next(iter(robustness["originals"].values()))
    fp = audio_fingerprint(wave, SR)
    assert fp.dtype == np.uint32 and 0 < fp.size <= wave.size / SR * 20 + 1
    assert (fingerprint_from_hex(fingerprint_to_hex(fp)) == fp).all()
    # The stored form (sample json ``audio_fp``): hex of the little-endian words + dtype.
    assert fingerprint_to_hex(fp) == fp.astype("<u4").tobytes().hex() + ":<u4"
    assert (fingerprint_from_hex(fingerprint_to_hex(fp).split(":")[0]) == fp).all()
    assert fingerprint_from_hex("") is None  # an augmented view stores no fingerprint
    assert fingerprint_similarity(fp, fingerprint_to_hex(fp)) == 1.0
    assert audio_fingerprint(np.zeros(1000, np.float32), SR).size == 0


@pytest.mark.parametrize("kind", ["mp3", "minus6db", "resampled"])
def test_copies_match_their_original(robustness: dict, kind: str) -> None:
    index = DedupIndex(near_threshold=THRESHOLD)
    for name, wave in sorted(robustness["originals"].items()):
        assert index.add(name, pcm_sha1(wave), audio_fingerprint(wave, SR)) is None, name
    for name, variants in sorted(robustness["variants"].items()):
        wave = variants[kind]
        sim = fingerprint_similarity(
            audio_fingerprint(wave, SR), audio_fingerprint(robustness["originals"][name], SR)
        )
        assert sim >= THRESHOLD, (name, kind, sim)
        assert index.query(pcm_sha1(wave), audio_fingerprint(wave, SR)) == name, (name, kind)


def test_different_clips_do_not_match(robustness: dict) -> None:
    fps = {n: audio_fingerprint(w, SR) for n, w in robustness["originals"].items()}
    sims = [
        fingerprint_similarity(fps[a], fps[b]) for a, b in itertools.combinations(sorted(fps), 2)
    ]
    assert max(sims) < THRESHOLD, max(sims)
    assert np.median(sims) < 0.65  # unrelated audio sits near chance (0.5)
    index = DedupIndex(near_threshold=THRESHOLD)
    for name in sorted(fps):
        assert index.add(name, pcm_sha1(robustness["originals"][name]), fps[name]) is None


def test_index_is_deterministic_in_key_order(corpora: Path) -> None:
    refs = [
        r
        for r in read_corpus(
            CorpusConfig(name="esc", reader="esc50", root=str(corpora / "esc50_mini"))
        )
    ]
    items = []
    for r in refs[:40]:
        seg = load_segments(r, AudioConfig(), SR)[0]
        key = sample_key(r.corpus, r.source_id, (seg.start_s, seg.end_s))
        items.append((key, pcm_sha1(seg.wave), audio_fingerprint(seg.wave, SR)))
    items.sort()
    runs = []
    for _ in range(2):
        index = DedupIndex()
        runs.append([index.add(*it) for it in items])
    assert runs[0] == runs[1]
    # Every reported duplicate points at an item fed earlier that is itself kept.
    kept = {k for (k, _, _), d in zip(items, runs[0]) if d is None}
    pos = {k: i for i, (k, _, _) in enumerate(items)}
    for (k, _, _), d in zip(items, runs[0]):
        if d is not None:
            assert d in kept and pos[d] < pos[k]


def test_planted_eval_overlap_is_rejected(corpora: Path, tmp_path: Path) -> None:
    """Eval = AudioCaps val; train = a folder with a -6 dB MP3 copy of one eval clip + others."""
    eval_cfg = CorpusConfig(
        name="ac_eval",
        reader="audiocaps",
        root=str(corpora / "audiocaps_mini"),
        splits=("val",),
    )
    clips, rejects = fingerprint_eval_corpus(eval_cfg, AudioConfig(), SR)
    assert not rejects and len(clips) >= 1
    index = build_eval_index(clips, THRESHOLD)
    assert len(index) >= 1
    eval_refs = [r for r in read_corpus(eval_cfg) if isinstance(r, SampleRef)]
    victim = eval_refs[len(eval_refs) // 2]
    x, sr = sf.read(victim.audio, dtype="float32", always_2d=True)
    train = tmp_path / "train"
    train.mkdir()
    sf.write(train / "planted.mp3", x.mean(axis=1) * np.float32(0.5), sr, format="MP3")
    for p in sorted((corpora / "audiocaps_mini" / "audio" / "train").iterdir())[:6]:
        shutil.copy(p, train / p.name)
    for p in sorted((corpora / "commonvoice_mini" / "en" / "clips").iterdir())[:4]:
        shutil.copy(p, train / p.name)
    hits = {}
    for ref in read_corpus(CorpusConfig(name="train", reader="folder", root=str(train))):
        for seg in load_segments(ref, AudioConfig(), SR):
            m = index.match(pcm_sha1(seg.wave), audio_fingerprint(seg.wave, SR))
            if m is not None:
                hits[ref.source_id] = eval_overlap_reject(ref, m)
    assert list(hits) == ["planted.mp3"]
    vseg = load_segments(victim, AudioConfig(), SR)[0]
    row = hits["planted.mp3"]
    assert row.reason == "eval_overlap" and row.stage == "dedup"
    assert sample_key("ac_eval", victim.source_id, (vseg.start_s, vseg.end_s)) in row.detail


def test_text_near_duplicates() -> None:
    index = TextDedupIndex(threshold=0.7)
    assert index.add("a", "A dog barks several times and then a man speaks") is None
    assert index.add("b", "a dog barks several times, and then a man speaks!") == "a"
    assert index.add("c", "Rain falls on a tin roof while thunder rumbles") is None
    assert index.add("d", "咖啡还是热的，请小心。") is None
    assert index.add("e", "咖啡还是热的,请小心") == "d"
    assert index.add("f", "") is None


def test_unreadable_eval_items_are_rejects_not_silence(corpora: Path, tmp_path: Path) -> None:
    """An eval file that does not decode, and a row the reader refuses, are reported."""
    root = tmp_path / "eval"
    root.mkdir()
    shutil.copy(min((corpora / "esc50_mini" / "audio").glob("*.wav")), root / "good.wav")
    (root / "broken.wav").write_bytes(b"RIFF not really a wave file at all")
    manifest = [
        {"audio_filepath": "good.wav", "text": "a sound", "duration": 5.0},
        {"audio_filepath": "broken.wav", "text": "a sound", "duration": 5.0},
        {"audio_filepath": "absent.wav", "text": "a sound", "duration": 5.0},
    ]
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(m) for m in manifest) + "\n")
    cfg = CorpusConfig(name="ev", reader="nemo", root=str(root), splits=("manifest.jsonl",))
    clips, rejects = fingerprint_eval_corpus(cfg, AudioConfig(), SR)
    assert [k.split("-")[0] for k, _, _ in clips] == ["ev"]
    by_reason = {(r.stage, r.reason): r.source for r in rejects}
    assert by_reason[("reader", "missing_file")].endswith("absent.wav")
    assert [s for (stage, _), s in by_reason.items() if stage == "decode"] == ["ev:broken.wav"]
