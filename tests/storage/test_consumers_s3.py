"""Evaluation, inference, embedding and the quality report over a bucket of a real S3 API on
loopback (moto server, real s3fs), and exports synced to a bucket (``model.sync``) loaded back.

The model is a TINY RANDOM polyclap export (1-layer patch transformer on the default log-mel,
the packaged MiniLM text tower) written by the production ``model.weights.write_export``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fixtures.s3 import forget_filesystems
from s3_sets import upload_tree

from dataprep.core import storage
from dataprep.core.config import ConfigError
from model.sync import SYNCED, pull, push_dir

CLIP = "esc50_mini/audio/1-248616-A-0.wav"


@pytest.fixture(autouse=True)
def _model_cache(monkeypatch, tmp_path) -> None:
    """Pulled exports go to the test's tmp dir, never to ~/.cache."""
    monkeypatch.setenv("POLYCLAP_CACHE", str(tmp_path / "model-cache"))


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    from model.clap import build_model
    from model.config import ExperimentConfig
    from model.weights import write_export

    torch.manual_seed(0)
    cfg = ExperimentConfig.model_validate(
        {
            "name": "tiny-random",
            "model": {
                "audio": {"dim": 32, "depth": 1, "heads": 2, "max_frames": 256},
                "text": {"kind": "minilm", "max_len": 32, "freeze": True},
                "embed_dim": 32,
            },
        }
    )
    net = build_model(cfg.model, cfg.features.n_mels)
    return write_export(tmp_path_factory.mktemp("export") / "final", net.state_dict(), cfg)


@pytest.fixture(scope="module")
def synced(s3_module, export) -> str:
    """The export synced as ``train.sync_to`` leaves it: ``<sync_to>/final`` (+ synced.json)."""
    root = s3_module.bucket("runs") + "/tiny"
    push_dir(export, f"{root}/final")
    return root


@pytest.fixture(scope="module")
def bucket_set(s3_module, local_set: Path) -> str:
    uri = s3_module.bucket("consumer-set") + "/demo"
    upload_tree(local_set, uri)
    return uri


def test_synced_export_loads_from_the_bucket_checked_and_cached(
    synced, export, corpora_root, tmp_path, caplog
):
    from model import CLAP
    from model.weights import load_for_eval

    local = CLAP.from_pretrained(export, device="cpu", progress=False)
    want = local.embed_audio([corpora_root / CLIP])
    for uri in (f"{synced}/final", synced):  # the export, or the sync_to root (its final/)
        m = CLAP.from_pretrained(uri, device="cpu", progress=False, cache_dir=tmp_path)
        np.testing.assert_allclose(m.embed_audio([corpora_root / CLIP]), want, atol=1e-6)
    cached = list(tmp_path.iterdir())
    assert len(cached) == 1 and (cached[0] / "model.safetensors").is_file()
    caplog.set_level(logging.INFO, logger="model.sync")
    pull(synced, tmp_path)  # everything cached with the right digest: nothing fetched
    assert any(" 0 of " in r.getMessage() for r in caplog.records)
    (cached[0] / "config.json").write_text("{}")  # a damaged cache file is fetched again
    pull(synced, tmp_path)
    assert (cached[0] / "config.json").read_bytes() == (export / "config.json").read_bytes()
    net, _, _ = load_for_eval(f"{synced}/final")  # jobs/evaluate.py's loader, same path
    assert all(
        torch.equal(a, b)
        for a, b in zip(net.state_dict().values(), local.net.state_dict().values())
    )


def test_interrupted_sync_is_never_loaded(s3_module, export, tmp_path, monkeypatch):
    uri = s3_module.bucket("interrupted") + "/final"
    push_dir(export, uri)  # a complete first sync ...
    real, calls = storage.upload, []

    def dies_on_the_second_file(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise storage.StorageUnavailable(f"{dst}: storage unreachable (simulated)")
        real(src, dst)

    monkeypatch.setattr(storage, "upload", dies_on_the_second_file)
    with pytest.raises(storage.StorageUnavailable):
        push_dir(export, uri)  # ... then a re-sync of the same name dies part-way
    monkeypatch.undo()
    assert not storage.exists(f"{uri}/{SYNCED}")  # the marker went first, and is not back
    with pytest.raises(FileNotFoundError, match=f"{uri}: no {SYNCED} here"):
        pull(uri, tmp_path)


def test_tampered_pickled_or_non_export_prefixes_are_refused(s3_module, export, tmp_path):
    root = s3_module.bucket("refused")
    push_dir(export, f"{root}/flipped")
    key = f"{root}/flipped/model.safetensors"
    data = bytearray(storage.read_bytes(key))
    data[len(data) // 2] ^= 1
    storage.write_bytes(key, bytes(data))
    with pytest.raises(storage.StorageError, match=f"{key}: sha256 differs from {SYNCED}"):
        pull(f"{root}/flipped", tmp_path)
    pickled = tmp_path / "pickled"
    shutil.copytree(export, pickled)
    (pickled / "extra.pt").write_bytes(b"\x80\x04N.")
    push_dir(pickled, f"{root}/pickled")
    with pytest.raises(storage.StorageError, match="extra.pt: a pickled file"):
        pull(f"{root}/pickled", tmp_path / "c")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "complete.json").write_text("{}")
    push_dir(ckpt, f"{root}/ckpt")
    with pytest.raises(storage.StorageError, match="not an export .no model.safetensors"):
        pull(f"{root}/ckpt", tmp_path / "c")


def test_sync_to_must_be_a_writable_bucket():
    from model.config import load_config

    for bad in ("outputs/mirror", "https://example.com/runs"):
        with pytest.raises(ConfigError, match="train.sync_to.*cannot write there"):
            load_config(None, ["loader.shards=x", f"train.sync_to={bad}"])
    cfg = load_config(None, ["loader.shards=x", "train.sync_to=s3://runs/a"])
    assert cfg.train.sync_to == "s3://runs/a"


def _task_file(tmp: Path, root: str) -> Path:
    tasks = {
        "defaults": {"batch_size": 8, "n_boot": 10, "seed": 0},
        "cache_dir": str(tmp / "eval_cache"),
        "tasks": [
            {
                "name": "esc50_zero_shot",
                "type": "zero_shot",
                "corpus": {"name": "esc50", "reader": "esc50", "root": root,
                           "options": {"eval_folds": [5]}},
                "split": "test",
            }
        ],
    }  # fmt: skip
    path = tmp / "tasks.yaml"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tasks))
    return path


def _fold5(corpora_root: Path, dest: Path) -> Path:
    """The bundled ESC-50 sample cut to its held-out fold (8 real clips): a small eval set."""
    src = corpora_root / "esc50_mini"
    rows = (src / "meta" / "esc50.csv").read_text().splitlines()
    keep = [rows[0]] + [r for r in rows[1:] if r.split(",")[1] == "5"]
    (dest / "meta").mkdir(parents=True)
    (dest / "meta" / "esc50.csv").write_text("\n".join(keep) + "\n")
    (dest / "audio").mkdir()
    for r in keep[1:]:
        shutil.copyfile(src / "audio" / r.split(",")[0], dest / "audio" / r.split(",")[0])
    return dest


def test_evaluate_a_synced_export_on_an_eval_set_in_the_bucket(
    s3_module, synced, export, corpora_root, tmp_path
):
    from jobs.evaluate import main

    local_root = _fold5(corpora_root, tmp_path / "esc50")
    eval_root = s3_module.bucket("eval-sets") + "/esc50"
    upload_tree(local_root, eval_root)
    out, local = tmp_path / "remote.json", tmp_path / "local.json"
    args = ["--no-random-init", "--tasks"]
    assert main(["--checkpoint", f"{synced}/final", "--out", str(out), *args,
                 str(_task_file(tmp_path / "r", eval_root))]) == 0  # fmt: skip
    assert main(["--checkpoint", str(export), "--out", str(local), *args,
                 str(_task_file(tmp_path / "l", str(local_root)))]) == 0  # fmt: skip
    got, want = (json.loads(p.read_text())["tasks"]["esc50_zero_shot"] for p in (out, local))
    assert got["metrics"] == want["metrics"] and got["metrics"]
    assert json.loads(out.read_text())["models"]["checkpoint"] == f"{synced}/final"


def test_evaluate_bad_remote_checkpoints_exit_2_naming_the_uri(s3_module, tmp_path, capsys):
    from jobs.evaluate import main

    empty = s3_module.bucket("no-export") + "/run"
    tasks = str(_task_file(tmp_path, "tests/fixtures/corpora/esc50_mini"))
    cases = [
        (["--checkpoint", empty], f"--checkpoint {empty} is remote: give --out"),
        (["--checkpoint", empty, "--out", str(tmp_path / "r.json")], f"{empty}: no {SYNCED}"),
    ]
    for argv, want in cases:
        assert main([*argv, "--tasks", tasks]) == 2
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("evaluate:")]
        assert len(lines) == 1 and want in lines[0], lines


def test_evaluate_unreachable_eval_set_exits_2_naming_it(
    s3_module, export, tmp_path, capsys, monkeypatch
):
    from jobs.evaluate import main

    root = s3_module.bucket("eval-dead") + "/esc50"
    monkeypatch.setattr(storage, "BACKOFF_S", (0.05, 0.1))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    forget_filesystems()
    try:
        argv = ["--checkpoint", str(export), "--out", str(tmp_path / "r.json"), "--tasks",
                str(_task_file(tmp_path, root))]  # fmt: skip
        assert main(argv) == 2
    finally:
        monkeypatch.undo()
        forget_filesystems()
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("evaluate:")]
    assert len(lines) == 1 and f"{root}: storage unreachable after 4 attempts" in lines[0], lines
    assert not (tmp_path / "r.json").exists()


# ------------------------------------------------------------------ quality report, embed ---
def _in_process(root: str | Path) -> dict:
    """The report as pipelines/quality_report.py assembles it, its Ray map done in-process."""
    from dataprep.report.collect import assemble, shard_jobs, summarize_shard
    from dataprep.report.stats import Partial

    merged, problems = Partial(), []
    for split, tar, exclude in shard_jobs(root):
        part, probs = summarize_shard(split, tar, exclude)
        merged.merge(part)
        problems += probs
    return json.loads(json.dumps(assemble(root, merged, problems)))


@pytest.fixture(scope="module")
def report_set(local_set: Path, tmp_path_factory) -> Path:
    """The shard set plus the build records the report reads: rejects and index parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dataprep.build.manifest import REJECT_SCHEMA
    from dataprep.core.sample import Reject

    root = tmp_path_factory.mktemp("report") / "set"
    shutil.copytree(local_set, root)
    rejects = [
        Reject("esc50:a.wav", "decode", "not_audio", "no audio stream", "esc50").as_row(),
        Reject("cv:b.mp3", "filters", "too_short", "0.2 s", "commonvoice").as_row(),
    ]
    pq.write_table(
        pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA), root / "train" / "rejects.parquet"
    )
    index = {
        "corpus": ["esc50", "esc50", "audiocaps"],
        "lang": ["en", None, "en"],
        "duration": [1.0, 2.5, 4.0],
        "speaker": [None, "s1", "s2"],
    }
    pq.write_table(pa.table(index), root / "train" / "index.parquet")  # fmt: skip
    return root


def test_quality_report_over_a_bucket_equals_the_local_one(s3_module, report_set):
    uri = s3_module.bucket("report-set") + "/set"
    upload_tree(report_set, uri)
    local, remote = _in_process(report_set), _in_process(uri)
    assert remote.pop("shards_dir") == uri and local.pop("shards_dir") == str(report_set)
    assert remote == local
    assert remote["rejects"]["total"] == 2 and remote["sampling"]["by_lang"]
    assert remote["build"]["present"] and remote["shards"]["train"]["count"] == 5


def test_quality_report_bad_remote_sets_exit_2_naming_the_uri(
    s3_module, report_set, tmp_path, capsys, monkeypatch
):
    from pipelines.quality_report import main

    root = s3_module.bucket("report-bad")
    upload_tree(report_set, f"{root}/short")
    storage.remove(f"{root}/short/train/shard-000003.tar")
    storage.write_bytes(f"{root}/none/train/shard-000000.tar", b"x")
    cases = [
        (f"{root}/none", f"{root}/none: no finished split"),
        (f"{root}/short", f"{root}/short/train: the listing disagrees with shards.json"),
    ]
    for uri, want in cases:
        assert main(["--shards", uri, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and want in err[0], err
    monkeypatch.setattr(storage, "BACKOFF_S", (0.05, 0.1))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    forget_filesystems()
    try:
        assert main(["--shards", f"{root}/short", "--out", str(tmp_path / "r")]) == 2
    finally:
        monkeypatch.undo()
        forget_filesystems()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{root}/short/train/shards.json: storage unreachable" in err[0], err
    assert not (tmp_path / "r").exists()


def test_embed_worker_over_a_bucket_equals_local(bucket_set, local_set, synced, export, capsys):
    """pipelines/embed.py's shard jobs and its Ray worker class, called directly (no Ray):
    the same rows from the bucket as from the local copy; a flipped byte is an error row."""
    from pipelines.embed import Worker, _shard_jobs, main

    def rows(shards: str, model: str) -> tuple[list, list]:
        from model import CLAP

        m = CLAP.from_pretrained(model, device="cpu", progress=False)
        w = Worker(model, "cpu", 16)
        got, bad = [], []
        for _, job in _shard_jobs(argparse.Namespace(shards=shards, split=None), m.pre.features):
            r, e = w.shard(*job)
            got += r
            bad += e
        return sorted(got, key=lambda r: r["key"]), bad

    want, _ = rows(str(local_set), str(export))
    got, bad = rows(bucket_set, f"{synced}/final")
    assert not bad and len(got) == len(want) == 84
    for a, b in zip(got, want):
        assert {k: v for k, v in a.items() if k != "embedding"} == {
            k: v for k, v in b.items() if k != "embedding"
        }
        np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-5)
    name = f"{bucket_set}/train/shard-000002.tar"
    data = bytearray(storage.read_bytes(name))
    data[len(data) // 2] ^= 1
    flipped = name.replace("/demo/", "/flipped/")
    storage.write_bytes(flipped, bytes(data))
    sha = json.loads(storage.read_bytes(f"{bucket_set}/train/shards.json"))["shards"][2]["sha256"]
    r, e = Worker(str(export), "cpu", 16).shard("train", flipped, sha)
    assert not r and e[0]["source"] == flipped and e[0]["reason"] == "corrupt_shard"
    assert main(["--model", str(export), "--shards", f"{bucket_set}/nothing", "--out", "x"]) == 2
    assert f"{bucket_set}/nothing: no build.json" in capsys.readouterr().err


def test_predict_remote_audio_and_manifest_with_a_synced_model(
    s3_module, synced, export, corpora_root, tmp_path
):
    from jobs.predict import main

    uri = s3_module.bucket("predict-audio") + "/clips"
    clips = sorted((corpora_root / "esc50_mini" / "audio").glob("*.wav"))[:2]
    for c in clips:
        storage.upload(c, f"{uri}/{c.name}")
    storage.write_bytes(f"{uri}/list.txt", "".join(f"{c.name}\n" for c in clips).encode())
    remote, local = tmp_path / "remote.jsonl", tmp_path / "local.jsonl"
    labels = ["--labels", "dog,rain,siren"]
    assert main(["--model", f"{synced}/final", *labels, "--out", str(remote),
                 f"{uri}/list.txt"]) == 0  # fmt: skip
    assert main(["--model", str(export), *labels, "--out", str(local), *map(str, clips)]) == 0
    got = [json.loads(x) for x in remote.read_text().splitlines()]
    want = [json.loads(x) for x in local.read_text().splitlines()]
    assert [g["file"] for g in got] == [f"{uri}/{c.name}" for c in clips]
    assert [g["top"] for g in got] == [w["top"] for w in want] and not any(g["error"] for g in got)
