"""CLAP-score curation (build.curation): the build's scorer actors, the decisions, the report.

Model: a TINY RANDOM transformers ClapModel saved to a tmp dir by ``hf_helpers.tiny_clap``
(LAION-CLAP's architecture with seeded random weights: the scores are meaningless as quality
judgements, so the tests check what the build does with them, not whether it keeps the right
clips). The build is the real entry point, pipelines/build_shards.py, on an embedded local Ray
(a real scorer actor) over the bundled corpora of configs/test_small.yaml.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dataprep import curation
from dataprep.core import shards, tario
from dataprep.core.config import ConfigError, CurationConfig
from dataprep.core.sample import META

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from hf_helpers import tiny_clap

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "test_small.yaml"
MIN_SCORE = 0.0  # the seeded tiny model scores a few train clips below 0 (asserted below)
PERCENTILE = 30.0
DETAIL_SCORE = re.compile(r"clap score (-?\d+\.\d{4})")


def build(out: Path, env: dict, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "pipelines/build_shards.py", "--config", str(CONFIG), "--out",
           str(out), "--num-cpus", "2", *overrides]  # fmt: skip
    return subprocess.run(
        cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )


def curate(model: Path) -> tuple[str, ...]:
    return (
        f"build.curation.model={model}",
        f"build.curation.min_score={MIN_SCORE}",
        f"build.curation.percentile={PERCENTILE}",
        "build.curation.batch_size=4",
    )


# ------------------------------------------------------------------ fast: decisions, config
def _part(rows: list[tuple[str, str, float, str]]) -> dict:
    """A part record's score and index rows: (key, corpus, primary score, shard decision)."""
    return {
        "scores": [
            {
                "key": k,
                "corpus": c,
                "split": "train",
                "lang": "en",
                "kind": "original",
                "text_index": 0,
                "primary": True,
                "score": s,
                "decision": d,
                "text": "t",
            }
            for k, c, s, d in rows
        ],  # fmt: skip
        "index": [{"key": k, "corpus": c} for k, c, _, d in rows if d == curation.KEPT],
    }


def test_percentile_cut_per_corpus_from_recorded_scores_views_follow():
    a = [(f"a-{i:016x}", "a", s, "kept") for i, s in enumerate([0.1, 0.2, 0.3, 0.4, 0.5])]
    # b: one clip already dropped by min_score in its shard: it counts in the pool, once
    b = [("b-0000000000000000", "b", -0.5, "clap_score_low"), ("b-0000000000000001", "b", 0.9,
         "kept"), ("b-0000000000000002", "b", 0.8, "kept")]  # fmt: skip
    parts = [_part(a[:3]), _part(a[3:] + b)]
    parts[0]["index"].append({"key": "a-0000000000000000v1", "corpus": "a"})  # a view
    cfg = CurationConfig(model="m", percentile=40.0)
    fin = curation.finalize_scores(parts, cfg)
    assert fin.cuts == {"a": 0.26, "b": 0.54}  # numpy linear percentile, rounded to 4 digits
    assert set(fin.excluded) == {"a-0000000000000000", "a-0000000000000001",
                                 "a-0000000000000000v1"}  # fmt: skip
    assert fin.excluded["a-0000000000000000v1"] is None  # no row of its own: its clip has one
    row = fin.excluded["a-0000000000000001"]
    assert row["reason"] == "clap_score_low" and "0.2000 < 0.2600" in row["detail"]
    decided = {r["key"]: r["decision"] for r in fin.rows["train"]}
    assert decided["a-0000000000000001"] == "clap_score_low" and decided["b-0000000000000002"] == (
        "kept"
    )
    # the same recorded scores, in another part order: the same decisions
    again = curation.finalize_scores(list(reversed(parts)), cfg)
    assert again.cuts == fin.cuts and again.excluded == fin.excluded
    pooled = curation.finalize_scores(parts, CurationConfig(model="m", percentile=40.0, per="all"))
    assert list(pooled.cuts) == ["all"]


def test_curation_config_is_checked(tmp_path):
    from model.config import load_config

    for bad in (["build.curation.percentile=20"], ["build.curation.model=x",
                "build.curation.percentile=100"], ["build.curation.model=x",
                "build.curation.min_score=1.5"], ["build.curation.modle=x"]):  # fmt: skip
        with pytest.raises(ConfigError):
            load_config(CONFIG, bad)


@pytest.mark.parametrize("kind", ["missing", "not_a_model"])
def test_bad_model_dir_is_one_line_exit_2_before_building(kind, tmp_path, subprocess_env):
    model = tmp_path / "model"
    if kind == "not_a_model":
        model.mkdir()
        (model / "config.json").write_text('{"hello": 1}')
    out = tmp_path / "shards"
    proc = build(out, subprocess_env, f"build.curation.model={model}", "build.curation.min_score=0")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and f"build.curation.model={model}" in lines[0], proc.stderr[-2000:]
    assert not out.exists()  # refused before anything was written (or Ray started)


# ------------------------------------------------------------------ slow: the real build
@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return tiny_clap(tmp_path_factory.mktemp("clap") / "tiny")  # TINY RANDOM ClapModel


@pytest.fixture(scope="module")
def curated(tmp_path_factory, subprocess_env, clap_dir) -> Path:
    out = tmp_path_factory.mktemp("curated") / "shards"
    proc = build(out, subprocess_env, *curate(clap_dir))
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "curation[train]:" in proc.stdout
    return out


def _tar_samples(split_dir: Path) -> dict[str, dict]:
    meta = shards.read_shards_json(split_dir)
    return {
        s["__key__"]: s[META]
        for e in meta["shards"]
        for s in tario.iter_shard(split_dir / e["name"])
    }


@pytest.mark.slow
def test_rejects_scores_and_kept_samples(curated: Path):
    train = curated / "train"
    scores = pq.read_table(train / curation.SCORES).to_pylist()
    primary = {r["key"]: r for r in scores if r["primary"]}
    assert primary and all(r["split"] == "train" for r in scores)
    assert {r["kind"] for r in scores} >= {"original", "template"}  # every text is scored
    rejects = [r for r in pq.read_table(train / shards.REJECTS).to_pylist()
               if r["reason"] == "clap_score_low"]  # fmt: skip
    assert rejects and all(r["stage"] == "curation" for r in rejects)
    for r in rejects:  # the score on the reject row is the recorded one
        assert float(DETAIL_SCORE.search(r["detail"]).group(1)) == primary[r["source"]]["score"]
    by_min = [r for r in rejects if "min_score" in r["detail"]]
    by_pct = [r for r in rejects if "percentile" in r["detail"]]
    assert by_min and by_pct and len(by_min) + len(by_pct) == len(rejects)
    low = {k for k, r in primary.items() if r["decision"] == "clap_score_low"}
    assert low == {r["source"] for r in rejects}
    meta = shards.read_shards_json(train)
    samples = _tar_samples(train)
    for r in by_min:  # dropped in its shard task: never written
        assert r["source"] not in samples and primary[r["source"]]["score"] < MIN_SCORE
    for r in by_pct:  # decided at finalize: in its tar, excluded, not in the index
        assert r["source"] in samples and r["source"] in meta["exclude"]
    index_keys = set(pq.read_table(train / shards.INDEX).column("key").to_pylist())
    assert not index_keys & low
    cuts = json.loads((curated / shards.BUILD_JSON).read_text())["counts"]["train"][
        "clap_score_cuts"
    ]
    kept = [k for k in index_keys if k in primary]
    assert kept
    for k in kept:  # kept samples carry their score, at or above both cuts
        s = samples[k]["stats"]["clap_score"]
        assert s == primary[k]["score"] and s >= MIN_SCORE and s >= cuts[samples[k]["corpus"]]
    for split in ("val", "test"):  # not curated: no scores
        if (curated / split).is_dir():
            assert not (curated / split / curation.SCORES).exists()
            assert all(
                "clap_score" not in m["stats"] for m in _tar_samples(curated / split).values()
            )


@pytest.mark.slow
def test_report_shows_the_score_distribution(curated: Path, tmp_path, subprocess_env):
    out = tmp_path / "report"
    cmd = [sys.executable, "pipelines/quality_report.py", "--shards", str(curated), "--out",
           str(out), "--num-cpus", "2"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env, capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    cur = json.loads((out / "report.json").read_text())["curation"]
    rows = pq.read_table(curated / "train" / curation.SCORES).to_pylist()
    assert cur["present"] and cur["pairs"] == len(rows)
    for corpus in {r["corpus"] for r in rows}:
        kinds = cur["by_corpus_kind"][corpus]
        want = {r["kind"] if not r["primary"] else "primary" for r in rows if r["corpus"] == corpus}
        assert set(kinds) == want
        assert kinds["primary"]["count"] == sum(1 for r in rows if r["corpus"] == corpus
                                                and r["primary"])  # fmt: skip
        assert sum(kinds["primary"]["hist"]) == kinds["primary"]["count"]
    low = sum(d.get("clap_score_low", 0) for d in cur["decisions"].values())
    assert low == sum(1 for r in rows if r["primary"] and r["decision"] == "clap_score_low")
    html = (out / "report.html").read_text()
    assert 'data-plot="clap_scores"' in html and "clap_score_low" in html


@pytest.mark.slow
def test_resume_after_losing_a_curated_shard_gives_the_same_bytes(
    curated: Path, tmp_path, subprocess_env, clap_dir
):
    """A shard lost (as after kill -9 mid-write) is rebuilt with the same scores, so its tar and
    the percentile decisions over every shard come out the same."""
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(curated, copy)
    before = {p: (copy / "train" / p).read_bytes() for p in (shards.SHARDS_JSON, curation.SCORES)}
    rejects_before = pq.read_table(copy / "train" / shards.REJECTS).to_pylist()
    victim = shards.read_shards_json(copy / "train")["shards"][0]["name"]
    (copy / "train" / victim).unlink()
    proc = build(copy, subprocess_env, *curate(clap_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 to build" in proc.stderr
    for p, data in before.items():
        assert (copy / "train" / p).read_bytes() == data, p
    assert pq.read_table(copy / "train" / shards.REJECTS).to_pylist() == rejects_before
    assert all(math.isfinite(r["score"]) for r in pq.read_table(copy / "train" / curation.SCORES)
               .to_pylist())  # fmt: skip


@pytest.mark.slow
def test_repair_rescores_a_corrupt_curated_shard(curated: Path, tmp_path, subprocess_env, clap_dir):
    """verify_shards --repair rebuilds a corrupt curated shard through the same injected scorer:
    the repaired set equals the original, percentile exclusions and scores included."""
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(curated, copy)
    victim = copy / "train" / shards.read_shards_json(copy / "train")["shards"][-1]["name"]
    data = bytearray(victim.read_bytes())
    data[700] ^= 0xFF
    victim.write_bytes(bytes(data))
    cmd = [sys.executable, "pipelines/verify_shards.py", str(copy), "--repair", "--config",
           str(CONFIG), *curate(clap_dir)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env, capture_output=True, text=True,
                          timeout=900, check=False)  # fmt: skip
    assert proc.returncode == 0 and "repaired" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    for p in (shards.SHARDS_JSON, curation.SCORES, shards.REJECTS):
        assert (copy / "train" / p).read_bytes() == (curated / "train" / p).read_bytes(), p
