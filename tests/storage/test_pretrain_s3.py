"""jobs/pretrain.py with --shards in a bucket of a real S3 API on loopback (moto server): two
steps under the real launcher (`deepspeed --num_gpus 2`, CPU/gloo), and bad remote inputs
refused with one line naming the URI, exit 2, before training starts. Tiny models (see
tests/jobs/test_pretrain.py); the tokenizer is trained by rank 0 from the remote texts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from s3_sets import upload_tree

from dataprep.core import storage

REPO = Path(__file__).resolve().parents[2]
DEEPSPEED = Path(sys.executable).parent / "deepspeed"
sys.path.insert(0, str(REPO / "tests" / "jobs"))
from test_pretrain import TINY  # noqa: E402  (after the sys.path line above)


@pytest.fixture(scope="module")
def bucket_set(s3_module, local_set: Path) -> str:
    uri = s3_module.bucket("pretrain-set") + "/demo"
    upload_tree(local_set, uri)
    return uri


@pytest.fixture(scope="module")
def env(subprocess_env, s3_module) -> dict[str, str]:
    e = {**subprocess_env, **s3_module.env}
    # a compiled DeepSpeed op the caller already has (its env) is reused, else built under .venv
    e.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".venv" / "torch_extensions"))
    return e


def _config(tmp: Path, **train: object) -> Path:
    cfg = json.loads(json.dumps(TINY))
    cfg["train"].update(train)
    cfg["loader"].update(num_workers=1, cache_dir=str(tmp / "cache"))
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_two_steps_from_the_bucket_under_deepspeed(
    s3_module, bucket_set, env, tmp_path, port, monkeypatch
):
    """Also the production save path with train.sync_to: both ranks save, rank 0 uploads the
    checkpoint and the final export; the export loads back from the bucket, checked."""
    sync = s3_module.bucket("pretrain-runs") + "/tiny"
    cfg = _config(tmp_path, max_steps=2, save_every=2, sync_to=sync)
    out = tmp_path / "run"
    cmd = [str(DEEPSPEED), "--num_gpus", "2", "--master_port", str(port), "jobs/pretrain.py",
           "--config", str(cfg), "--shards", bucket_set, "--out", str(out)]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
                       check=False)  # fmt: skip
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert sorted(r["step"] for r in rows if "loss" in r) == [1, 2]
    assert (out / "final").is_dir()
    assert list((tmp_path / "cache").glob("*.tar"))  # checked shards kept in the local cache
    # the checkpoint in the bucket: every local file, by sha256, marker and latest last
    from dataprep.core.atomic import sha256_file

    local_ckpt = out / "checkpoints" / "step-00000002"
    want = {f.relative_to(local_ckpt).as_posix(): sha256_file(f)
            for f in local_ckpt.rglob("*") if f.is_file()}  # fmt: skip
    marker = storage.read_json(f"{sync}/checkpoints/step-00000002/synced.json")
    assert {k: v["sha256"] for k, v in marker["files"].items()} == want
    assert "complete.json" in want and any(k.endswith("model_states.pt") for k in want)
    assert storage.read_bytes(f"{sync}/checkpoints/latest") == b"step-00000002"
    # the export: loaded from the bucket, the same weights as the local one
    import torch

    from model.weights import load_for_eval

    monkeypatch.setenv("POLYCLAP_CACHE", str(tmp_path / "model-cache"))
    remote, _, _ = load_for_eval(f"{sync}/final")
    local, _, _ = load_for_eval(out / "final")
    a, b = remote.state_dict(), local.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # A replaced node: the run's --out is gone. The same command, now to step 4, resumes from
    # the bucket's step 2 (downloaded, each file checked), trains steps 3-4, and the bucket then
    # keeps only the newest synced checkpoint (keep_last=1; sync_keep_last follows it).
    shutil.rmtree(out)
    cmd[cmd.index("--config") + 1] = str(
        _config(tmp_path, max_steps=4, save_every=2, sync_to=sync, keep_last=1)
    )
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
                       check=False)  # fmt: skip
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-4000:]
    assert f"downloaded checkpoint step-00000002 from {sync}" in log, log[-4000:]
    assert "(step 2, epoch" in log  # "resumed from .../step-00000002 (step 2, epoch 0)"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert sorted(r["step"] for r in rows if "loss" in r) == [3, 4]
    assert storage.folders(f"{sync}/checkpoints") == ["step-00000004"]
    assert storage.read_bytes(f"{sync}/checkpoints/latest") == b"step-00000004"


def _pretrain(shards: str, env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "jobs/pretrain.py", "--config", str(_config(tmp)), "--shards", shards,
           "--out", str(tmp / "run")]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip


def _without(env: dict[str, str], *keys: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in keys}


def test_bad_remote_shards_exit_2_naming_the_uri(s3_module, bucket_set, env, tmp_path):
    empty = s3_module.bucket("no-shards-json") + "/demo"
    storage.write_bytes(f"{empty}/train/shard-000000.tar", b"x")
    cases = [
        (f"{empty}", env, f"{empty} is not a shard set"),
        (bucket_set, {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
         f"{bucket_set}/train/shards.json: storage unreachable"),
        (bucket_set, {**_without(env, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
                      "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                      "AWS_EC2_METADATA_DISABLED": "true"},
         f"{bucket_set}/train/shards.json: no credentials found"),
    ]  # fmt: skip
    for shards, e, want in cases:
        r = _pretrain(shards, e, tmp_path)
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("pretrain:")]
        assert r.returncode == 2 and len(lines) == 1 and want in lines[0], r.stderr[-2000:]
        assert not (tmp_path / "run" / "metrics.jsonl").exists()
