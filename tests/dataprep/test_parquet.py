"""dataprep/core/parquet.py: parquet reads stay off pyarrow's native thread pools.

Those pools are torn down at interpreter exit, and a live worker then aborts the process
(``terminate called without an active exception``, exit -6) after its work is done; CI saw
``verify_shards.py`` exit -6 after printing "ok". Measured before the fix: 7 of 150 fresh
processes reading one index with pyarrow's defaults aborted at exit. The tests check that the
project's reads start no pool threads (the default read starts one per core), and that every
parquet read in production code goes through this module.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]

_CHILD = """
import os, sys
import pyarrow as pa, pyarrow.parquet as pq
from dataprep.core import parquet
path = sys.argv[1]
threads = lambda: len(os.listdir("/proc/self/task"))
parquet.read_table(path, columns=["key"])  # the first read may start one helper thread
first = threads()
for _ in range(3):
    parquet.read_table(path)
    parquet.read_table(open(path, "rb").read(), columns=["key"])
    parquet.row_groups(parquet.open_file(path), [0])
serial = threads()
pq.read_table(path)  # pyarrow's default read, for contrast
print(first, serial, threads())
"""


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "index.parquet"
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(1000)], "n": list(range(1000))}), path)
    return path


def test_reads_start_no_pool_threads(tmp_path: Path, subprocess_env) -> None:
    path = _write(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    first, serial, default = map(int, out)
    assert serial == first, f"serial reads started {serial - first} threads"
    assert default > serial, "pyarrow's default read should start its pool (the contrast)"


def test_reads_return_the_table(tmp_path: Path) -> None:
    from dataprep.core import parquet

    path = _write(tmp_path)
    assert parquet.read_table(path, columns=["key"]).column("key").to_pylist()[:2] == ["k0", "k1"]
    assert parquet.read_table(path.read_bytes()).num_rows == 1000
    assert parquet.read_table(str(path)).column_names == ["key", "n"]
    assert parquet.row_groups(parquet.open_file(path), [0]).num_rows == 1000


def test_production_reads_parquet_only_through_the_owner() -> None:
    pattern = re.compile(
        r"\bpq\.(read_table|ParquetFile|read_pandas|ParquetDataset)\b|"
        r"\.read_row_groups\(|read_parquet\("
    )
    owner = REPO / "dataprep" / "core" / "parquet.py"
    offenders = [
        f"{p.relative_to(REPO)}:{n}"
        for pkg in ("dataprep", "model", "pipelines", "jobs")
        for p in sorted((REPO / pkg).rglob("*.py"))
        if p != owner
        for n, line in enumerate(p.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert not offenders, f"parquet read outside dataprep/core/parquet.py: {offenders}"
    assert os.path.isfile(owner)
