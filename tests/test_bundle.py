"""The bundled corpora are self-consistent and within the size budget."""

from __future__ import annotations

import csv
import json

MAX_BYTES = 15_000_000


def test_bundle_size_budget(corpora_root):
    total = sum(p.stat().st_size for p in corpora_root.rglob("*") if p.is_file())
    assert 0 < total <= MAX_BYTES, total


def test_every_metadata_row_resolves(corpora_root):
    missing = []
    for row in csv.DictReader((corpora_root / "esc50_mini/meta/esc50.csv").open()):
        if not (corpora_root / "esc50_mini/audio" / row["filename"]).exists():
            missing.append(row["filename"])
    for manifest in (corpora_root / "nemo_manifest_mini").glob("*.jsonl"):
        for line in manifest.read_text().splitlines():
            p = json.loads(line)["audio_filepath"]
            if not (manifest.parent / p).exists():
                missing.append(p)
    for tsv in (corpora_root / "commonvoice_mini").glob("*/*.tsv"):
        if tsv.name in {"clip_durations.tsv", "provenance.tsv"}:
            continue
        for row in csv.DictReader(tsv.open(encoding="utf-8"), delimiter="\t"):
            if not (tsv.parent / "clips" / row["path"]).exists():
                missing.append(row["path"])
    for row in csv.DictReader((corpora_root / "provenance.csv").open(encoding="utf-8")):
        if not (corpora_root / row["path"]).exists():
            missing.append(row["path"])
    # bad_inputs keeps its deliberately broken rows: a missing file and the generated long clip
    bad = [json.loads(x)["audio_filepath"] for x in (corpora_root / "bad_inputs/manifest.jsonl").read_text().splitlines()]
    absent = sorted({p for p in bad if not (corpora_root / "bad_inputs" / p).exists()})
    assert absent == ["missing_file.wav", "very_long_5min.ogg"]
    assert missing == []
