"""No load path unpickles what it was handed (issue 19 defect 2).

Crafted directories hold a pickle whose ``__reduce__`` writes a file when unpickled. Loading
them for evaluation (``load_for_eval`` and ``jobs/evaluate.py --checkpoint``), exporting them
(``jobs/export.py``) and resuming from them (``load_checkpoint``) must refuse, and the file must
never appear. A real round trip (save marker -> verify -> weights-only read) runs in
tests/jobs/test_pretrain.py (ZeRO-0 single process) and test_evaluate_deepspeed.py (ZeRO-2).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoint import COMPLETE, UntrustedCheckpoint, load_checkpoint, verify_checkpoint
from model.checkpoint import _file_digests as digests
from model.config import load_config
from model.weights import load_for_eval

REPO = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this runs ``exec``: the attack a pickled checkpoint can carry."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({str(self.mark)!r}, 'w').write('code ran')",))


def _evil(path: Path, mark: Path) -> None:
    torch.save({"module": _Payload(mark)}, path)  # pickling calls __reduce__, not exec


def _config(d: Path) -> None:
    cfg = load_config(REPO / "configs" / "test_small.yaml")
    (d / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))


@pytest.fixture()
def mark(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def _ds_dir(tmp_path: Path, mark: Path, marker: dict | None) -> Path:
    """A DeepSpeed-looking checkpoint directory with a poisoned model-states file."""
    d = tmp_path / "run" / "checkpoints" / "step-00000001"
    d.mkdir(parents=True)
    _evil(d / "mp_rank_00_model_states.pt", mark)
    _evil(d / "trainer_state_rank0.pt", mark)
    _config(d)
    if marker is not None:
        (d / COMPLETE).write_text(json.dumps(marker))
    return d


def test_old_pickle_export_is_refused_not_unpickled(tmp_path: Path, mark: Path) -> None:
    d = tmp_path / "final"
    d.mkdir()
    _evil(d / "model.pt", mark)
    _config(d)
    with pytest.raises(ValueError, match="model.pt is a torch pickle"):
        load_for_eval(d)
    assert not mark.exists()


def test_unmarked_checkpoint_is_refused_before_reading(tmp_path: Path, mark: Path) -> None:
    d = _ds_dir(tmp_path, mark, {"step": 1, "world_size": 1})  # a marker of the old format
    with pytest.raises(UntrustedCheckpoint, match="not written by polyclap"):
        load_for_eval(d)
    with pytest.raises(UntrustedCheckpoint):
        load_for_eval(tmp_path / "run")  # via the run directory
    assert not mark.exists()


def test_a_forged_marker_still_gets_no_unpickling(tmp_path: Path, mark: Path) -> None:
    """Whoever can write the files can write matching checksums; evaluation then still reads
    DeepSpeed's files weights-only, and the payload is refused."""
    d = _ds_dir(tmp_path, mark, None)
    (d / COMPLETE).write_text(
        json.dumps(
            {"writer": "polyclap", "format": 2, "step": 1, "world_size": 1, "files": digests(d)}
        )
    )
    verify_checkpoint(d)  # the checksums match
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_for_eval(d)
    assert not mark.exists()


class _Engine:
    def __init__(self) -> None:
        self.loaded = False

    def load_checkpoint(self, *a, **k):  # type: ignore[no-untyped-def]
        self.loaded = True
        return "x", {}


def test_resume_refuses_untrusted_and_tampered_directories(tmp_path: Path, mark: Path) -> None:
    d = _ds_dir(tmp_path, mark, {"step": 1, "world_size": 1})
    eng = _Engine()
    with pytest.raises(UntrustedCheckpoint, match="not written by polyclap"):
        load_checkpoint(eng, d)
    marker = {"writer": "polyclap", "format": 2, "step": 1, "world_size": 1, "files": digests(d)}
    (d / COMPLETE).write_text(json.dumps(marker))
    (d / "planted.pt").write_bytes(b"x")
    with pytest.raises(UntrustedCheckpoint, match="not written by this save: planted.pt"):
        load_checkpoint(eng, d)
    (d / "planted.pt").unlink()
    _evil(d / "mp_rank_00_model_states.pt", tmp_path / "other")  # swapped after the save
    with pytest.raises(
        UntrustedCheckpoint, match="changed since saved: mp_rank_00_model_states.pt"
    ):
        load_checkpoint(eng, d)
    (d / "config.json").unlink()
    with pytest.raises(UntrustedCheckpoint, match="missing config.json"):
        load_checkpoint(eng, d)
    assert not eng.loaded and not mark.exists()


@pytest.mark.parametrize("forged", [False, True])
def test_evaluate_and_export_entry_points_refuse(
    tmp_path: Path, mark: Path, forged: bool, subprocess_env: dict[str, str]
) -> None:
    d = _ds_dir(tmp_path, mark, {"step": 1, "world_size": 1})
    if forged:
        (d / COMPLETE).write_text(
            json.dumps(
                {"writer": "polyclap", "format": 2, "step": 1, "world_size": 1, "files": digests(d)}
            )
        )
    for cmd in (
        [
            "jobs/evaluate.py",
            "--checkpoint",
            str(d),
            "--tasks",
            "configs/tasks/demo.yaml",
            "--no-random-init",
            "--out",
            str(tmp_path / "r.json"),
        ],
        ["jobs/export.py", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "exp")],
    ):
        p = subprocess.run(
            [sys.executable, *cmd],
            cwd=REPO,
            env=subprocess_env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert p.returncode == 2, (cmd, p.stderr[-2000:])
        assert "Traceback" not in p.stderr and ("refusing" in p.stderr), p.stderr[-2000:]
    assert not mark.exists() and not (tmp_path / "exp").exists()
