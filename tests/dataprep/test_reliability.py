"""Issue 19: bad inputs that used to pass or crash now end as a recorded, reasoned reject.

Real readers on copies of the bundled corpora, real audio written with soundfile, and the real
per-input processor (``SampleProcessor``) that the shard tasks run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dataprep.core.config import CorpusConfig
from dataprep.core.sample import Reject, SampleRef
from dataprep.corpora import read_corpus


@pytest.fixture(scope="session")
def corpora(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("corpora_root")


def _read(root: Path, **kw) -> tuple[list[SampleRef], list[Reject]]:
    items = list(read_corpus(CorpusConfig(name="n", reader="nemo", root=str(root), **kw)))
    return [i for i in items if isinstance(i, SampleRef)], [
        i for i in items if isinstance(i, Reject)
    ]


def _nemo_copy(corpora: Path, dst: Path) -> tuple[Path, list[str]]:
    """The bundled NeMo corpus copied to ``dst``; returns it and the train manifest's lines."""
    shutil.copytree(corpora / "nemo_manifest_mini", dst)
    return dst, (dst / "train_manifest.jsonl").read_text(encoding="utf-8").splitlines()


# ------------------------------------------------------------ defect 3: manifests that crashed


def test_non_utf8_byte_in_manifest_is_one_reject_naming_the_line(
    corpora: Path, tmp_path: Path
) -> None:
    root, lines = _nemo_copy(corpora, tmp_path / "nm")
    raw = [line.encode("utf-8") for line in lines]
    # One Latin-1 byte inside the transcript of line 2 (a file re-saved by the wrong editor).
    raw[1] = raw[1].replace(b'"text": "', b'"text": "caf\xe9 ', 1)
    (root / "train_manifest.jsonl").write_bytes(b"\n".join(raw) + b"\n")
    refs, rejects = _read(root)
    assert [(r.reason, r.source) for r in rejects] == [
        ("invalid_metadata", "n:train_manifest.jsonl:2")
    ]
    assert "not valid UTF-8" in rejects[0].detail and "0xe9" in rejects[0].detail
    dev = (root / "dev_manifest.jsonl").read_text().splitlines()
    assert len(refs) == len(lines) - 1 + len(dev)  # every other line of both manifests read
    assert json.loads(lines[0])["audio_filepath"] in {r.source_id for r in refs}


def test_manifest_symlinked_out_of_the_root_is_a_reject_not_a_crash(
    corpora: Path, tmp_path: Path
) -> None:
    root, lines = _nemo_copy(corpora, tmp_path / "nm")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "dev_manifest.jsonl").rename(outside / "dev_manifest.jsonl")
    (root / "dev_manifest.jsonl").symlink_to(outside / "dev_manifest.jsonl")
    refs, rejects = _read(root)
    assert [(r.reason, r.source) for r in rejects] == [("path_escape", "n:dev_manifest.jsonl")]
    assert len(refs) == len(lines)  # the train manifest is still read


def test_manifest_symlink_inside_the_root_is_read(corpora: Path, tmp_path: Path) -> None:
    root, lines = _nemo_copy(corpora, tmp_path / "nm")
    (root / "dev_manifest.jsonl").unlink()
    (root / "meta").mkdir()
    (root / "train_manifest.jsonl").rename(root / "meta" / "real.jsonl")
    (root / "train_manifest.jsonl").symlink_to(root / "meta" / "real.jsonl")
    refs, rejects = _read(root, splits=("train_manifest",))
    assert not rejects and len(refs) == len(lines)


def test_dangling_or_missing_manifest_is_a_reject(corpora: Path, tmp_path: Path) -> None:
    root, lines = _nemo_copy(corpora, tmp_path / "nm")
    (root / "dev_manifest.jsonl").unlink()
    (root / "dev_manifest.jsonl").symlink_to(root / "gone.jsonl")
    refs, rejects = _read(root, splits=("train_manifest", "dev_manifest", "test_manifest"))
    assert sorted((r.reason, r.source) for r in rejects) == [
        ("unreadable_metadata", "n:dev_manifest.jsonl"),
        ("unreadable_metadata", "n:test_manifest.jsonl"),
    ]
    assert len(refs) == len(lines)
