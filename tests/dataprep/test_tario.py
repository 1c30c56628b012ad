"""The tar writer writes what Python's ``tarfile`` writes for the same members (issue 20 made it
write headers and padding itself): shards built before and after stay byte-identical."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np

from dataprep.core import tario


def _samples(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        key = f"corpusé-{i:016x}" if i % 3 == 0 else f"c-{i:016x}"  # non-ASCII keys too
        mel = rng.standard_normal((64, int(rng.integers(1, 700)))).astype(np.float16)
        out.append({"__key__": key, "mel.npy": mel, "json": {"id": key, "t": "ü" * i},
                    "txt": "hello " * i, "flac": bytes(range(i % 256))})  # fmt: skip
    return out


def _tarfile_bytes(samples: list[dict]) -> bytes:
    """The reference: ``tarfile`` in stream mode, USTAR, the writer's fixed member fields."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for s in sorted(samples, key=lambda s: s["__key__"]):
            members = tario.encode_sample(s)
            for ext in sorted(members):
                ti = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                ti.size, ti.mtime, ti.mode = len(members[ext]), tario.FIXED_MTIME, 0o644
                tar.addfile(ti, io.BytesIO(members[ext]))
    return buf.getvalue()


def test_writer_bytes_are_tarfiles_and_the_entry_hashes_them(tmp_path: Path) -> None:
    for n in (0, 1, 7, 40):
        samples = _samples(n)
        entry = tario.write_tar_atomic(tmp_path / f"s{n}.tar", samples[::-1])  # any order in
        data = (tmp_path / f"s{n}.tar").read_bytes()
        assert data == _tarfile_bytes(samples), n
        assert entry == {"name": f"s{n}.tar", "samples": n, "bytes": len(data),
                         "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
        back = dict(tario.iter_tar_members(tmp_path / f"s{n}.tar"))  # our reader reads it
        assert sorted(back) == sorted(s["__key__"] for s in samples)
