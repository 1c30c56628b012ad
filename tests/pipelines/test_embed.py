"""pipelines/embed.py (a real embedded Ray, model actors) and jobs/search.py over its index.

Model: a TINY RANDOM transformers ClapModel saved to a tmp dir by ``hf_helpers.tiny_clap``
(LAION-CLAP's architecture; random weights, so only structure and exactness are tested, not
retrieval quality). Data: real shards built by pipelines/build_shards.py from the bundled
corpora with the htsat feature preset, and the bundled ESC-50 corpus read directly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from hf_helpers import tiny_clap

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "test_small.yaml"


def _run(cmd, env, timeout=600):
    return subprocess.run(
        [sys.executable, *map(str, cmd)],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return tiny_clap(tmp_path_factory.mktemp("clap") / "tiny")


@pytest.fixture(scope="module")
def other_clap(clap_dir, tmp_path_factory):
    """The same weights read with another mel band: other features, other fingerprint."""
    d = tmp_path_factory.mktemp("clap8k") / "tiny"
    d.mkdir()
    for f in clap_dir.iterdir():
        (d / f.name).symlink_to(f)
    (d / "preprocessor_config.json").write_text(json.dumps({"frequency_max": 8000}))
    return d


@pytest.fixture(scope="module")
def shards(tmp_path_factory, subprocess_env):
    out = tmp_path_factory.mktemp("shards") / "htsat"
    r = _run(
        [
            "pipelines/build_shards.py",
            "--config",
            CONFIG,
            "--out",
            out,
            "--num-cpus",
            "2",
            "features.preset=htsat",
            "features.dtype=float32",
            "build.augment.templates=false",
        ],
        subprocess_env,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_embed_shards_one_row_per_key(shards, clap_dir, tmp_path, subprocess_env):
    from dataprep.core.sample import MEL
    from dataprep.core.shards import shard_paths
    from dataprep.core.tario import iter_shard
    from model import CLAP

    out = tmp_path / "index"
    r = _run(
        [
            "pipelines/embed.py",
            "--model",
            clap_dir,
            "--shards",
            shards,
            "--out",
            out,
            "--workers",
            "2",
            "--num-cpus",
            "2",
        ],
        subprocess_env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    table = pq.read_table(out / "embeddings.parquet")
    keys = table.column("key").to_pylist()
    samples = {
        s["__key__"]: s
        for split in ("train", "val", "test")
        if (shards / split).is_dir()
        for t in shard_paths(shards / split)
        for s in iter_shard(t)
    }
    assert sorted(keys) == sorted(samples) and len(set(keys)) == len(keys)
    info = json.loads((out / "index.json").read_text())
    m = CLAP.from_pretrained(clap_dir, device="cpu")
    assert info["model_fingerprint"] == m.fingerprint() and info["rows"] == len(keys)
    # each row is the model's embedding of that sample's stored features
    emb = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    want = m.embed_features([samples[k][MEL] for k in keys[:4]])
    np.testing.assert_allclose(emb[:4], want, atol=1e-5)


def test_embed_refuses_features_of_another_model(shards, other_clap, tmp_path, subprocess_env):
    r = _run(
        ["pipelines/embed.py", "--model", other_clap, "--shards", shards, "--out", tmp_path / "x"],
        subprocess_env,
    )
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert "feature fingerprint mismatch" in line and "f_max_hz: 8000.0 != 14000.0" in line


def test_corpus_index_and_search(clap_dir, other_clap, tmp_path, subprocess_env, corpora_root):
    out = tmp_path / "index"
    r = _run(
        [
            "pipelines/embed.py",
            "--model",
            clap_dir,
            "--config",
            CONFIG,
            "--corpus",
            "esc50",
            "--out",
            out,
            "--workers",
            "1",
            "--num-cpus",
            "1",
            "--chunk",
            "8",
        ],
        subprocess_env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((out / "index.json").read_text())
    assert info["rows"] == 16 and info["errors"] == 0  # max_items: 16 in test_small.yaml
    sources = pq.read_table(out / "embeddings.parquet").column("source").to_pylist()
    query = sorted(sources)[3]
    r = _run(
        ["jobs/search.py", "--index", out, "--audio", query, "--text", "a dog barks", "--k", "3"],
        subprocess_env,
    )
    assert r.returncode == 0, r.stderr
    hits = [json.loads(x) for x in r.stdout.splitlines()]
    audio_hits = [h for h in hits if h["query"].startswith("audio:")]
    text_hits = [h for h in hits if h["query"].startswith("text:")]
    assert len(audio_hits) == 3 and len(text_hits) == 3
    # audio -> audio: the file itself is the best match (its index row is the same embedding)
    assert audio_hits[0]["source"] == query and audio_hits[0]["score"] > 0.9999
    assert [h["rank"] for h in text_hits] == [1, 2, 3]
    assert text_hits[0]["score"] >= text_hits[1]["score"] >= text_hits[2]["score"]
    assert "search: exact, 16 rows" in r.stderr  # auto: a small index is searched exactly
    # the same queries through the HNSW graph (built, saved beside the index): on 16 rows it
    # finds the exact hits
    r = _run(
        ["jobs/search.py", "--index", out, "--audio", query, "--text", "a dog barks", "--k", "3",
         "--ann", "on"],
        subprocess_env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "search: approximate (HNSW), 16 rows" in r.stderr
    assert (out / "ann.usearch").is_file() and (out / "ann.json").is_file()
    approx = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(h["query"], h["key"]) for h in approx] == [(h["query"], h["key"]) for h in hits]
    assert all(abs(a["score"] - h["score"]) < 1e-4 for a, h in zip(approx, hits))
    r = _run(
        ["jobs/search.py", "--index", out, "--model", other_clap, "--text", "rain"], subprocess_env
    )
    assert r.returncode == 2 and "was embedded with" in r.stderr


def test_model_card_summarizes_the_training_shards(shards, tmp_path):
    """model.card on a real shard set: corpora, hours, languages and licenses per split."""
    from model.card import data_summary, write_model_card
    from model.config import ExperimentConfig

    summary = data_summary(shards)
    assert set(summary["corpora"]) == {"esc50", "audiocaps", "commonvoice"}
    train = summary["splits"]["train"]
    assert train["samples"] > 0 and set(train["hours"]) <= set(summary["corpora"])
    assert "en" in train["languages"] and sum(train["languages"].values()) == train["samples"]
    assert all(lic for lics in train["licenses"].values() for lic in lics)
    cfg = ExperimentConfig.model_validate({"features": {"preset": "htsat"}})
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.md").write_text("| task | acc |\n|---|---|\n| esc50 | 0.5 |\n")
    card = write_model_card(tmp_path, cfg, shards=shards).read_text()
    for part in (
        "## Architecture",
        "preset `htsat`",
        "## Training data",
        "commonvoice",
        "| esc50 | 0.5 |",
        "## Intended use and limits",
        "does not trim",
    ):
        assert part in card, part
    assert "No evaluation table" in model_card_without_eval(cfg)


def model_card_without_eval(cfg):
    from model.card import model_card

    return model_card(cfg, summary=None, eval_table=None)
