"""The bundled corpora are self-consistent and within the size budget.

Every metadata row of every sub-corpus must name a bundled file; the only exceptions are the two
rows of bad_inputs/manifest.jsonl documented in BUNDLE.md (a deliberately missing file, and the
5-minute clip that tests generate at run time).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

MAX_BYTES = 15_000_000
ABSENT_ON_PURPOSE = {"missing_file.wav", "very_long_5min.ogg"}


def _table(path: Path, delimiter: str = ",") -> list[dict]:
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter=delimiter, quoting=quoting))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _referenced(root: Path) -> list[tuple[str, Path]]:
    """(metadata file, path it names) for every row of every metadata file in the bundle."""
    refs: list[tuple[str, Path]] = []

    def add(meta: Path, target: Path) -> None:
        refs.append((str(meta.relative_to(root)), target))

    esc = root / "esc50_mini"
    for r in _table(esc / "meta/esc50.csv"):
        add(esc / "meta/esc50.csv", esc / "audio" / r["filename"])
    ac = root / "audiocaps_mini"
    for split, ext in (("train", "ogg"), ("val", "flac")):
        for r in _table(ac / f"{split}.csv"):
            add(ac / f"{split}.csv", ac / "audio" / split / f"{r['youtube_id']}.{ext}")
    for tsv in sorted((root / "commonvoice_mini").glob("*/*.tsv")):
        col = "clip" if tsv.name == "clip_durations.tsv" else "path"
        for r in _table(tsv, "\t"):
            add(tsv, tsv.parent / "clips" / r[col])
    ls = root / "librispeech_mini/LibriSpeech"
    for trans in sorted(ls.glob("*/*/*/*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            add(trans, trans.parent / f"{line.split(' ', 1)[0]}.flac")
    speakers = {p.name: p for p in ls.glob("*/*") if p.is_dir()}
    chapters = {p.name: p for p in ls.glob("*/*/*") if p.is_dir()}
    for name, dirs in (("SPEAKERS.TXT", speakers), ("CHAPTERS.TXT", chapters)):
        for line in (ls / name).read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith(";"):
                key = line.split("|")[0].strip()
                add(ls / name, dirs.get(key, ls / f"<no folder for {key}>"))
    cr = root / "cremad_mini"
    wavs = sorted((cr / "AudioWAV").glob("*.wav"))
    for r in _table(cr / "VideoDemographics.csv"):
        hit = [w for w in wavs if w.name.startswith(r["ActorID"] + "_")]
        add(
            cr / "VideoDemographics.csv",
            hit[0] if hit else cr / f"<no clip of actor {r['ActorID']}>",
        )
    for r in _table(cr / "SentenceFilenames.csv"):
        hit = [w for w in wavs if w.name.split("_")[1] == r["Filename"]]
        add(cr / "SentenceFilenames.csv", hit[0] if hit else cr / f"<no clip of {r['Filename']}>")
    kws = root / "kws_mini"
    for r in _table(kws / "keywords.csv"):
        add(kws / "keywords.csv", kws / r["lang"] / r["label"])
    for lst in sorted(kws.glob("*/*_list.txt")):
        for line in lst.read_text(encoding="utf-8").split():
            add(lst, lst.parent / line)
    for manifest in sorted((root / "nemo_manifest_mini").glob("*.jsonl")):
        for r in _jsonl(manifest):
            add(manifest, manifest.parent / r["audio_filepath"])
    bad = root / "bad_inputs/manifest.jsonl"
    for r in _jsonl(bad):
        add(bad, bad.parent / r["audio_filepath"])
    for r in _table(root / "provenance.csv"):
        add(root / "provenance.csv", root / r["path"])
    return refs


def test_bundle_size_budget(corpora_root):
    total = sum(p.stat().st_size for p in corpora_root.rglob("*") if p.is_file())
    assert 0 < total <= MAX_BYTES, total


def test_every_metadata_row_resolves(corpora_root):
    refs = _referenced(corpora_root)
    # every sub-corpus contributed rows (a renamed column would otherwise silently check nothing)
    metas = {m.split("/")[0] for m, _ in refs}
    assert metas >= {
        "esc50_mini",
        "audiocaps_mini",
        "commonvoice_mini",
        "librispeech_mini",
        "cremad_mini",
        "kws_mini",
        "nemo_manifest_mini",
        "bad_inputs",
        "provenance.csv",
    }, metas
    missing = [(m, str(p.relative_to(corpora_root))) for m, p in refs if not p.exists()]
    on_purpose = [
        x
        for x in missing
        if x[0] == "bad_inputs/manifest.jsonl" and Path(x[1]).name in ABSENT_ON_PURPOSE
    ]
    assert sorted(Path(p).name for _, p in on_purpose) == sorted(ABSENT_ON_PURPOSE)
    assert [x for x in missing if x not in on_purpose] == []


def test_every_audio_file_is_listed(corpora_root):
    """The converse: no stray audio that no metadata (or provenance) row mentions."""
    named = {p.resolve() for _, p in _referenced(corpora_root)}
    audio = {".wav", ".flac", ".ogg", ".mp3"}
    stray = [
        str(p.relative_to(corpora_root))
        for p in sorted(corpora_root.rglob("*"))
        if p.suffix in audio and p.resolve() not in named
    ]
    assert stray == []


def test_bundle_matches_its_description(corpora_root):
    """The coverage BUNDLE.md promises (others' tests rely on it)."""
    # breadth over depth (issue 15): every ESC class, CV locale and keyword language of the
    # team's corpora (/work/shared/corpora STATS.md: 26 classes, 15 locales, 15 languages)
    esc = _table(corpora_root / "esc50_mini/meta/esc50.csv")
    per_class = Counter(r["category"] for r in esc)
    assert len(per_class) == 26 and set(per_class.values()) == {2}, per_class
    assert {r["fold"] for r in esc} == {"1", "2", "3", "4", "5"}
    assert {r["category"] for r in esc if r["fold"] == "5"} == set(per_class)  # all scored
    locales = {p.name for p in (corpora_root / "commonvoice_mini").iterdir() if p.is_dir()}
    assert len(locales) == 15 and locales >= {"en", "es", "fr", "ru", "de", "zh-CN", "hi", "ar"}
    assert all(
        list((corpora_root / "commonvoice_mini" / loc / "clips").iterdir()) for loc in locales
    )
    kws = _table(corpora_root / "kws_mini/keywords.csv")
    kws_langs = Counter(r["lang"] for r in kws)
    assert (
        len(kws_langs) == 15
        and min(kws_langs.values()) >= 2
        and kws_langs.keys()
        >= {
            "en",
            "zh",
            "hi",
        }
    )
    emotions = {p.stem.split("_")[2] for p in (corpora_root / "cremad_mini/AudioWAV").glob("*.wav")}
    actors = {p.stem.split("_")[0] for p in (corpora_root / "cremad_mini/AudioWAV").glob("*.wav")}
    assert emotions == {"ANG", "DIS", "FEA", "HAP", "NEU", "SAD"} and len(actors) >= 2
    ls = corpora_root / "librispeech_mini/LibriSpeech"
    assert (ls / "train-clean-100/9101").is_dir() and len(list(ls.glob("train-clean-100/*"))) >= 2
    assert list(ls.glob("dev-clean/*"))
