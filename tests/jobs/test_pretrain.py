"""jobs/pretrain.py through the real launcher: `deepspeed --num_gpus 2` on CPU (gloo).

Shards are made from real bundled audio (see tests/dataprep/test_loader.py::make_shards). Tiny
models and few steps; every run uses a free --master_port. No GPU here: CPU accelerator only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dataprep"))
from conftest import free_port
from jobrun import (
    deepspeed,
    ds_env,
    launch,
    losses,
    metrics,
    ok,
    pretrain_args,
    python,
    run,
    single_rank,
)
from test_loader import make_shards

from model.training import SHM_BUFFER

TINY = {
    "name": "tiny",
    "model": {
        "embed_dim": 32,
        "audio": {
            "dim": 32,
            "depth": 1,
            "heads": 2,
            "patch_freq": 16,
            "patch_time": 16,
            "max_frames": 128,
            "dropout": 0.1,
        },
        "text": {
            "vocab_size": 512,
            "dim": 32,
            "depth": 1,
            "heads": 2,
            "max_len": 24,
            "dropout": 0.1,
        },
    },
    "train": {
        "zero_stage": 2,
        "micro_batch": 8,
        "lr": 0.003,
        "warmup_steps": 2,
        "max_steps": 6,
        "save_every": 3,
        "log_every": 1,
        "tensorboard": False,
        "seed": 1,
    },
    "loader": {"num_workers": 0},
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, corpora_root: Path) -> Path:
    root = tmp_path_factory.mktemp("shards")
    make_shards(corpora_root, root, n_shards=4)
    make_shards(corpora_root, root, n_shards=1, limit=24, split="val")
    return root


@pytest.fixture(scope="module")
def env(subprocess_env: dict[str, str]) -> dict[str, str]:
    return ds_env(subprocess_env)


def _config(tmp: Path, loader: dict[str, object] | None = None, **train: object) -> Path:
    cfg = json.loads(json.dumps(TINY))
    cfg["train"].update(train)
    cfg["loader"].update(loader or {})
    path = tmp / f"cfg-{len(list(tmp.glob('cfg-*')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(cfg: Path, shards: Path, out: Path, port: int, env: dict[str, str]):
    return launch(deepspeed(port, *pretrain_args(cfg, shards, out)), env)


def _run(cfg: Path, shards: Path, out: Path, port: int, env: dict[str, str]) -> str:
    return ok(run(deepspeed(port, *pretrain_args(cfg, shards, out)), env, timeout=240))


def _single(cfg: Path, shards: Path, out: Path, port: int, env: dict[str, str]):
    """Plain `python jobs/pretrain.py`: one process, env rendezvous, no launcher."""
    return run(python(*pretrain_args(cfg, shards, out)), single_rank(env, port), timeout=180)


def _wait_for_step(out: Path, step: int, proc, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {step}: {proc.stdout.read()[-3000:]}")
        try:
            if max(losses(out), default=0) >= step:
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def _shm_buffers(port: int) -> list[Path]:
    """DeepSpeed's CPU all-reduce segments of the run on ``port`` (model.training.SHM_BUFFER)."""
    return list(Path("/dev/shm").glob(f"{SHM_BUFFER}_*_{port}_*"))


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "final" / "model.safetensors"))


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(
    tmp_path: Path, shards: Path, env, port
) -> None:
    # 2 dataloader workers per rank (the resumed loader must rotate them back into step) and the
    # gradient cache (its RNG replay must not disturb the restored RNG streams)
    cfg = _config(
        tmp_path, {"num_workers": 2}, max_steps=24, save_every=4, micro_batch=16, chunk_size=5
    )
    ref = tmp_path / "ref"
    _run(cfg, shards, ref, port, env)
    want = losses(ref)
    assert sorted(want) == list(range(1, 25))
    seq = [want[s] for s in sorted(want)]
    assert sum(seq[-5:]) < sum(seq[:5]) - 0.5, "ZeRO-2 + gradient cache: loss should decrease"

    run, killed_port = tmp_path / "run", free_port()
    p = _launch(cfg, shards, run, killed_port, env)
    _wait_for_step(run, 10, p)
    os.killpg(p.pid, signal.SIGKILL)  # the whole job: launcher, ranks, loader workers
    p.wait(timeout=30)
    assert not _shm_buffers(killed_port), "a killed run left DeepSpeed's /dev/shm buffers"
    assert not (run / "final").exists(), "the run finished before it was killed"
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    assert ckpts and all(int(c.name[5:]) < 24 for c in ckpts)
    text = _run(cfg, shards, run, free_port(), env)
    assert "resumed from" in text
    assert len(list((run / "checkpoints").glob("step-*"))) == 2  # keep_last
    got = losses(run)
    assert got == want, "loss sequence after SIGKILL + resume differs from the uninterrupted run"
    a, b = _final_weights(ref), _final_weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_cleanly(tmp_path: Path, shards: Path, env, port) -> None:
    cfg = _config(tmp_path, max_steps=100000, save_every=100000)
    out = tmp_path / "run"
    p = _launch(cfg, shards, out, port, env)
    _wait_for_step(out, 3, p)
    os.killpg(p.pid, signal.SIGTERM)  # what a scheduler's preemption sends to the job
    text, _ = p.communicate(timeout=120)
    assert "Traceback" not in text, text[-3000:]
    assert "preempted (SIGTERM)" in text and "exiting cleanly" in text
    latest = (out / "checkpoints" / "latest").read_text().strip()
    ckpt = out / "checkpoints" / latest
    done = json.loads((ckpt / "complete.json").read_text())
    assert done["step"] == max(losses(out)) >= 3 and done["world_size"] == 2
    assert {f.name for f in ckpt.glob("trainer_state_rank*")} == {
        "trainer_state_rank0.json",
        "trainer_state_rank1.json",
    }
    assert not (out / "final").exists()
    # the DeepSpeed checkpoint is usable for evaluation as it is (zero_to_fp32 on the fly,
    # its files read weights-only after the marker checksums are verified)
    from model.weights import load_for_eval

    model, cfg_loaded, tok = load_for_eval(out)
    assert cfg_loaded.train.max_steps == 100000 and not model.training
    ids, mask = tok.encode_batch(["a dog barks"], 16)
    assert model.encode_text(ids, mask).shape == (1, 32)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 3])  # ZeRO-2: the resume test above
def test_zero_stages_train(tmp_path: Path, shards: Path, env, port, stage: int) -> None:
    cfg = _config(tmp_path, zero_stage=stage, max_steps=30, save_every=1000, warmup_steps=3)
    out = tmp_path / "run"
    text = _run(cfg, shards, out, port, env)
    seq = [v for _, v in sorted(losses(out).items())]
    assert len(seq) == 30
    first, last = sum(seq[:5]) / 5, sum(seq[-5:]) / 5
    assert last < first - 0.1, f"ZeRO-{stage}: loss did not decrease ({first:.3f} -> {last:.3f})"
    assert "Traceback" not in text
    assert not _shm_buffers(port), "DeepSpeed's 64 MiB /dev/shm buffer per rank outlived the run"
    # final export loads and embeds
    from model.weights import load_for_eval

    # an export outlives schema changes of sections evaluation does not need
    conf = json.loads((out / "final" / "config.json").read_text())
    conf.setdefault("build", {})["key_from_another_version"] = 1
    (out / "final" / "config.json").write_text(json.dumps(conf))
    model, _, tok = load_for_eval(out / "final")
    ids, mask = tok.encode_batch(["rain on a roof", "a dog"], 24)
    emb = model.encode_text(ids, mask)
    assert emb.shape == (2, 32) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-4)
    meta = json.loads((out / "final" / "meta.json").read_text())
    assert meta["step"] == 30 and meta["zero_stage"] == stage


def test_not_a_shard_set_is_a_clear_error(tmp_path: Path, env) -> None:
    cfg = _config(tmp_path)
    p = run(python(*pretrain_args(cfg, tmp_path, tmp_path / "o")), env, timeout=120)
    assert p.returncode == 2
    assert "is not a shard set" in p.stderr and "shards.json" in p.stderr


def test_fingerprint_mismatch_refused(tmp_path: Path, shards: Path, env, port) -> None:
    cfg = json.loads(json.dumps(TINY))
    cfg["features"] = {"n_mels": 80}
    path = tmp_path / "mismatch.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = _single(path, shards, tmp_path / "o", port, env)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "feature fingerprint mismatch" in p.stderr and "n_mels: 80 != 64" in p.stderr


@pytest.mark.slow
def test_time_budget_zero0_single_process_without_launcher(
    tmp_path: Path, shards: Path, env, port
) -> None:
    """Plain `python jobs/pretrain.py` (one process, env rendezvous), ZeRO-0, stopped by the time
    budget long before max_steps: it checkpoints and exports like a finished run."""
    cfg = _config(tmp_path, zero_stage=0, max_steps=100000, save_every=100000, time_budget_s=3.0)
    out = tmp_path / "run"
    p = _single(cfg, shards, out, port, env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "time budget of 3 s reached" in p.stderr
    steps = max(losses(out))
    assert 1 <= steps < 100000
    meta = json.loads((out / "final" / "meta.json").read_text())
    assert meta["step"] == steps and meta["zero_stage"] == 0
    from model.weights import load_for_eval

    model, _, _ = load_for_eval(out / "checkpoints")  # stage 0: weights from the model-states file
    final = _final_weights(out)
    assert all(torch.equal(v, final[k]) for k, v in model.state_dict().items())
    # the checkpoint was read weights-only and its marker verified; a file planted into it
    # afterwards makes the resume refuse the directory before DeepSpeed unpickles anything
    ckpt = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    assert json.loads((ckpt / "complete.json").read_text())["writer"] == "polyclap"
    (ckpt / "extra_optim_states.pt").write_bytes(b"not ours")
    p = _single(cfg, shards, out, port, env)
    assert p.returncode == 2 and "not resuming from" in p.stderr, p.stderr[-3000:]
    assert "not written by this save: extra_optim_states.pt" in p.stderr


@pytest.mark.slow
def test_corrupt_shard_is_skipped_and_counted_in_metrics(
    tmp_path: Path, shards: Path, env, port
) -> None:
    """Issue 19 defect 1 through the trainer: a shard with flipped mel bytes is never fed and
    its skip shows in metrics.jsonl (``loader_*`` counters of rank 0)."""
    import shutil

    from test_loader import _flip_mel_bytes

    root = tmp_path / "shards"
    shutil.copytree(shards, root)
    _flip_mel_bytes(next((root / "train").glob("shard-*.tar")))
    cfg = _config(tmp_path, zero_stage=0, max_steps=100000, save_every=100000, time_budget_s=3.0)
    out = tmp_path / "run"
    p = _single(cfg, root, out, port, env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "corrupt shard" in p.stderr and "sha256" in p.stderr
    last = [r for r in metrics(out) if "loss" in r][-1]
    assert last["loader_corrupt_shards"] >= 1 and last["loader_skipped_samples"] > 0
