"""pipelines/verify_shards.py: its sample counts agree with the build's and explain the gap.

The build counts a split's samples as the tars' samples minus the cross-shard duplicates that
``shards.json`` excludes (they stay in their finished tar). Verify reads the tars; before this
test it printed the tar count (133 for the demo build, which reports 130). The fast tests use a
shard set written with the production tar writer; the slow one runs the real demo build.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataprep.core.atomic import atomic_write_json
from dataprep.core.shards import INDEX, SHARDS_JSON, shard_name
from dataprep.core.tario import write_tar_atomic

REPO = Path(__file__).resolve().parents[2]
VERIFY = REPO / "pipelines" / "verify_shards.py"


def _sample(key: str) -> dict:
    mel = np.full((4, 6), len(key), np.float16)
    return {"__key__": key, "mel.npy": mel, "json": {"id": key}, "txt": f"text of {key}"}


def make_set(root: Path, per_split: dict[str, int], excluded: dict[str, int]) -> None:
    """Splits with ``per_split`` samples over two shards, the first ``excluded[split]`` keys
    excluded as duplicates; build.json counts as the builder writes them."""
    counts = {}
    for split, n in per_split.items():
        keys = [f"c-{split}{i:04d}" for i in range(n)]
        entries = [
            write_tar_atomic(root / split / shard_name(s), [_sample(k) for k in keys[s::2]])
            for s in range(2)
        ]
        exclude = sorted(keys[: excluded.get(split, 0)])
        kept = [k for k in keys if k not in exclude]
        pq.write_table(pa.table({"key": kept}), root / split / INDEX)
        atomic_write_json(
            root / split / SHARDS_JSON, {"shards": entries, "samples": n, "exclude": exclude}
        )
        counts[split] = {"samples": n - len(exclude), "rejects": len(exclude)}
    atomic_write_json(root / "build.json", {"counts": counts})


def verify(root: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(VERIFY), str(root)],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_counts_agree_with_build_and_name_the_excluded(tmp_path: Path, subprocess_env) -> None:
    make_set(tmp_path, {"train": 9, "val": 4}, {"train": 2})
    proc = verify(tmp_path, subprocess_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert "11 samples (train 7, val 4)" in line, line
    assert "the tars hold 13: 2 cross-shard duplicates or CLAP-score cuts (train 2)" in line
    assert "excluded" in line


def test_disagreement_with_build_json_is_a_problem(tmp_path: Path, subprocess_env) -> None:
    make_set(tmp_path, {"train": 6}, {"train": 1})
    build = json.loads((tmp_path / "build.json").read_text())
    build["counts"]["train"]["samples"] = 6  # a build that forgot its excluded duplicate
    (tmp_path / "build.json").write_text(json.dumps(build))
    proc = verify(tmp_path, subprocess_env)
    assert proc.returncode == 1
    assert "build.json reports 6 samples, the tars hold 6 of which 1 are excluded: 5" in proc.stdout


@pytest.mark.slow
def test_demo_build_and_verify_report_the_same_samples(tmp_path: Path, subprocess_env) -> None:
    out = tmp_path / "demo"
    build = subprocess.run(
        [
            sys.executable,
            "pipelines/build_shards.py",
            "--config",
            "configs/demo.yaml",
            "--out",
            str(out),
            "--num-cpus",
            "2",
        ],
        check=False,
        cwd=REPO,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-4000:]
    built = {
        m[0]: int(m[1]) for m in re.findall(r"shards\[(\w+)\]: \S+ \((\d+) samples", build.stdout)
    }
    record = json.loads((out / "build.json").read_text())["counts"]
    assert built == {s: c["samples"] for s, c in record.items()}
    proc = verify(out, subprocess_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    total = sum(built.values())
    per_split = ", ".join(f"{s} {built[s]}" for s in ("train", "val", "test") if s in built)
    assert f"{total} samples ({per_split})" in proc.stdout
    excluded = sum(len(json.loads((out / s / SHARDS_JSON).read_text())["exclude"]) for s in built)
    if excluded:
        assert f"the tars hold {total + excluded}: {excluded} cross-shard duplicates" in proc.stdout
