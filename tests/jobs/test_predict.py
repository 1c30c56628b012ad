"""jobs/predict.py: zero-shot labels for unlabelled audio, run as the real command line.

Model: a TINY RANDOM transformers ClapModel saved to a tmp dir by ``hf_helpers.tiny_clap``
(stands in for a LAION-CLAP directory; its scores are meaningless, the rows are what is tested).
Audio: real bundled clips (ESC-50 wavs, Common Voice mp3s), copied without their metadata.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from hf_helpers import tiny_clap

REPO = Path(__file__).resolve().parents[2]
PREDICT = [sys.executable, str(REPO / "jobs" / "predict.py")]


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return tiny_clap(tmp_path_factory.mktemp("clap") / "tiny")


@pytest.fixture()
def folder(tmp_path, corpora_root):
    """Unlabelled clips: 3 ESC-50 wavs, 1 Common Voice mp3, an empty file, a text file that
    claims to be a wav, and a README that is not audio (skipped: folders list audio files)."""
    d = tmp_path / "unlabelled"
    (d / "sub").mkdir(parents=True)
    for p in sorted((corpora_root / "esc50_mini" / "audio").glob("*.wav"))[:3]:
        shutil.copy(p, d / p.name)
    mp3 = min((corpora_root / "commonvoice_mini").rglob("*.mp3"))
    shutil.copy(mp3, d / "sub" / mp3.name)
    (d / "empty.wav").write_bytes(b"")
    (d / "fake.wav").write_text("not audio " * 50)
    (d / "README.txt").write_text("notes")
    return d


def _run(args, env):
    return subprocess.run(
        [*PREDICT, *map(str, args)],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        timeout=600,
        cwd=REPO,
    )


def test_predict_folder_one_row_per_file(clap_dir, folder, tmp_path, subprocess_env):
    out = tmp_path / "preds.csv"
    r = _run(
        [
            "--model",
            clap_dir,
            "--labels",
            "dog barking,rain,a person speaking",
            "--top-k",
            "2",
            "--out",
            out,
            folder,
        ],
        subprocess_env,
    )
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    audio = sorted(p for p in folder.rglob("*") if p.suffix in {".wav", ".mp3"})
    assert sorted(Path(x["file"]) for x in rows) == audio  # one row per audio file, no README
    by_name = {Path(x["file"]).name: x for x in rows}
    assert by_name["empty.wav"]["error"].startswith("empty_file:")
    assert by_name["fake.wav"]["error"].startswith("not_audio:")
    good = [x for x in rows if not x["error"]]
    assert len(good) == 4
    for x in good:
        assert {x["label_1"], x["label_2"]} <= {"dog barking", "rain", "a person speaking"}
        assert 1.0 >= float(x["score_1"]) >= float(x["score_2"]) > 0.0
    assert list(rows[0]) == ["file", "label_1", "score_1", "label_2", "score_2", "error"]


def test_predict_manifest_jsonl_and_templates(clap_dir, folder, tmp_path, subprocess_env):
    manifest = tmp_path / "list.jsonl"
    names = sorted(p.name for p in folder.glob("*.wav"))
    manifest.write_text(
        "".join(json.dumps({"audio_filepath": f"unlabelled/{n}"}) + "\n" for n in names)
    )
    out = tmp_path / "preds.jsonl"
    r = _run(
        [
            "--model",
            clap_dir,
            "--labels",
            "dog,rain",
            "--templates",
            "the sound of {}|{}",
            "--templates",
            "ein {}",
            "--lang",
            "en",
            "--lang",
            "de",
            "--out",
            out,
            manifest,
        ],
        subprocess_env,
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [Path(x["file"]).name for x in rows] == names
    ok = [x for x in rows if x["error"] is None]
    assert ok and all(len(x["top"]) == 2 for x in ok)
    assert all(abs(sum(t["score"] for t in x["top"]) - 1.0) < 1e-4 for x in ok)


@pytest.mark.parametrize(
    "labels, match",
    [
        ("dog,rain,dog", "duplicate labels"),
        ("dog,,rain", "empty label at position"),
    ],
)
def test_bad_labels_exit_2_one_line(clap_dir, folder, tmp_path, subprocess_env, labels, match):
    r = _run(
        ["--model", clap_dir, "--labels", labels, "--out", tmp_path / "p.csv", folder],
        subprocess_env,
    )
    assert r.returncode == 2
    assert match in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p.csv").exists()


def test_wrong_model_dirs_exit_2_one_line(clap_dir, folder, tmp_path, subprocess_env):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    wrong = tmp_path / "clap16k"  # a ClapModel whose extractor is not the htsat preset
    wrong.mkdir()
    for f in clap_dir.iterdir():
        (wrong / f.name).symlink_to(f)
    (wrong / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 16000}))
    for model, match in (
        (bert, "a transformers 'bert' directory"),
        (wrong, "differ from the htsat preset"),
        (tmp_path / "missing", "not a local directory"),
    ):
        r = _run(
            ["--model", model, "--labels", "dog,rain", "--out", tmp_path / "p.csv", folder],
            subprocess_env,
        )
        assert r.returncode == 2, r.stderr
        assert match in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
