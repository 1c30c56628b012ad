"""Reading parquet files: the one place the project calls pyarrow's parquet readers.

pyarrow's default read decodes on its CPU thread pool and prefetches on its IO pool. Those
native pools are torn down at interpreter exit, and a worker still alive then makes the process
abort with ``terminate called without an active exception`` (SIGABRT, exit -6) after its work
is done: apache/arrow#34314, #38352. Measured here: 7 of 150 fresh processes that read one small
index with the defaults aborted at exit, 0 of 150 with the serial read below. Our tables are
indexes and score lists (thousands of rows), so reading them on the calling thread costs
nothing measurable and a CLI's exit status stays the truth.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from dataprep.core import storage

# Keyword arguments that keep a read off pyarrow's thread pools.
_SERIAL = {"use_threads": False, "pre_buffer": False}


def read_table(source: Any, columns: list[str] | None = None) -> Any:
    """``source`` (a local path, a URI of any storage backend, bytes or a pyarrow buffer) as a
    pyarrow table, read on the calling thread."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(source, bytes | bytearray):
        source = pa.BufferReader(bytes(source))
    elif isinstance(source, str | os.PathLike) and storage.is_remote(str(source)):
        source = io.BytesIO(storage.read_bytes(str(source)))
    elif isinstance(source, os.PathLike):
        source = str(Path(source))
    return pq.read_table(source, columns=columns, **_SERIAL)


def open_file(path: str | os.PathLike[str]) -> Any:
    """A ``ParquetFile`` for row-group reads; read it with ``read_row_groups(groups)`` — the
    reads stay serial because the file is opened without pre-buffering and :func:`row_groups`
    passes ``use_threads=False``."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(str(path), pre_buffer=False)


def row_groups(pf: Any, groups: list[int]) -> Any:
    """Row groups ``groups`` of an :func:`open_file` file as one table, on the calling thread."""
    return pf.read_row_groups(groups, use_threads=False)
