"""Checks beside test_manifests.py: the trainer's own config path for the DeepSpeed presets, the
documented config examples, and that this machine can run the network-namespace cluster test.

* Presets: `infra/deepspeed/launch.sh` turns a preset into trailing `train.*` overrides (one of
  them `train.ds_config=<json>`). Here those exact strings go through
  `model.config.load_config` (the path `jobs/pretrain.py` uses), then `make_ds_config` and
  DeepSpeed's own `DeepSpeedConfig` with the world sizes of 1 and 2 nodes x 8 GPUs.
* Docs: the YAML blocks of `infra/STORAGE.md` and of `infra/README.md`'s vLLM section are loaded
  with `load_config`, so a renamed key under `build.augment.llm` breaks this test, not a user.
* Namespace: `test_ray_two_nodes.py` skips without root/iproute2; this test fails instead, with
  the reason, so a CI runner that cannot create network namespaces is noticed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from model.config import load_config

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
PRESETS = sorted((INFRA / "deepspeed").glob("ds_*.json"))


def _launch_overrides(preset: Path) -> list[str]:
    """The train.* arguments launch.sh appends for a preset (its dry run prints the command)."""
    hostfile_env = dict(
        os.environ,
        PYTHON=sys.executable,
        DRY_RUN="1",
        PRESET=preset.stem,
        HOSTFILE=str(INFRA / "deepspeed" / "hostfile"),
    )
    r = subprocess.run(
        ["bash", str(INFRA / "deepspeed" / "launch.sh"), "--config", "configs/test_small.yaml"],
        env=hostfile_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    # printf %q escapes JSON punctuation with backslashes; undo it per argument
    return [re.sub(r"\\(.)", r"\1", a) for a in r.stdout.split() if a.startswith("train.")]


def test_there_are_presets():
    assert {p.name for p in PRESETS} >= {"ds_zero2_bf16.json", "ds_zero3_offload.json"}


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_goes_through_the_trainers_config_path(preset):
    from deepspeed.runtime.config import DeepSpeedConfig

    from model.training import make_ds_config

    overrides = _launch_overrides(preset)
    assert any(o.startswith("train.ds_config=") for o in overrides), overrides
    cfg = load_config(REPO / "configs" / "test_small.yaml", overrides)
    raw = json.loads(preset.read_text())
    frag = {k: v for k, v in raw.items() if not k.startswith("_")}
    assert cfg.train.ds_config == frag  # the JSON survived the shell and the YAML-scalar parsing
    assert cfg.train.zero_stage == frag["zero_optimization"]["stage"]
    assert cfg.train.precision == "bf16"
    for world in (1, 16):
        ds = make_ds_config(cfg.train, world_size=world)
        # the preset never touches batch sizes: they still follow train.micro_batch x world
        assert ds["train_batch_size"] == cfg.train.micro_batch * cfg.train.grad_accum_steps * world
        # a fragment leaf wins over the derived value, siblings the preset does not set survive
        assert ds["zero_optimization"]["stage"] == frag["zero_optimization"]["stage"]
        for key, value in frag["zero_optimization"].items():
            assert ds["zero_optimization"][key] == value
    # DeepSpeed's pydantic validation (unknown keys raise); it checks the batch arithmetic
    # against the process group's world size, 1 here
    parsed = DeepSpeedConfig(make_ds_config(cfg.train, world_size=1))
    assert parsed.zero_optimization_stage == cfg.train.zero_stage
    assert parsed.bfloat16_config.enabled and not parsed.float16_config.enabled
    offloaded = "offload_optimizer" in frag["zero_optimization"]
    assert cfg.train.offload is offloaded


def test_a_misspelled_preset_key_is_refused_by_deepspeed():
    """The validation above can fail: a typo inside zero_optimization is an error, not ignored."""
    from deepspeed.runtime.config import DeepSpeedConfig

    from model.training import make_ds_config

    bad = json.dumps(
        {"zero_optimization": {"stage": 2, "overlap_comms": True}}, separators=(",", ":")
    )
    cfg = load_config(REPO / "configs" / "test_small.yaml", [f"train.ds_config={bad}"])
    with pytest.raises(Exception, match="overlap_comms"):
        DeepSpeedConfig(make_ds_config(cfg.train, world_size=2))


def _yaml_blocks(md: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", md.read_text(), re.DOTALL)


def test_storage_doc_example_is_a_valid_config(tmp_path):
    blocks = _yaml_blocks(INFRA / "STORAGE.md")
    assert len(blocks) == 1
    path = tmp_path / "cluster_s3.yaml"
    path.write_text(blocks[0])
    cfg = load_config(path)
    roots = [c.root for c in cfg.build.corpora]
    assert any(r.startswith("s3://") for r in roots) and any(r.startswith("gs://") for r in roots)
    # the example builds straight into a bucket and trains from it (issue 18)
    assert cfg.build.out.startswith("s3://") and cfg.loader.shards == cfg.build.out
    assert cfg.train.sync_to.startswith("s3://")  # checkpoints and exports synced to a bucket
    assert cfg.build.augment.llm.server == "external" and cfg.build.augment.llm


@pytest.mark.parametrize("out", ["https://host/x", "ftp://host/x"])
def test_non_object_store_build_out_is_refused_before_any_work(tmp_path, out):
    """build.out may be a path or an s3:// / gs:// URI (atomic object commit, issue 18); any
    other scheme is refused, and a URI taken as a path would silently create a folder `https:`."""
    from dataprep.core.config import ConfigError

    with pytest.raises(ConfigError, match="build.out must be a local/shared path or an s3"):
        load_config(REPO / "configs" / "test_small.yaml", [f"build.out={out}"])
    r = subprocess.run(
        [
            sys.executable,
            "pipelines/build_shards.py",
            "--config",
            "configs/test_small.yaml",
            "--out",
            out,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 2 and "build.out must be a local/shared path" in r.stderr, r.stderr
    assert "Started a local Ray" not in r.stderr + r.stdout
    assert not (REPO / (out.split(":")[0] + ":")).exists()
    for uri in ("s3://bucket/shards", "gs://b/x"):
        assert (
            load_config(REPO / "configs" / "test_small.yaml", [f"build.out={uri}"]).build.out == uri
        )
    # file:// is a local path: every consumer of build.out sees it without the scheme
    assert load_config(
        REPO / "configs" / "test_small.yaml", [f"build.out=file://{tmp_path}"]
    ).build.out == str(tmp_path)


def test_readme_vllm_block_is_a_valid_llm_config(tmp_path):
    blocks = [b for b in _yaml_blocks(INFRA / "README.md") if "llm:" in b]
    assert len(blocks) == 1, "infra/README.md should show one build.augment.llm example"
    path = tmp_path / "llm.yaml"
    path.write_text(blocks[0])
    llm = load_config(path).build.augment.llm
    assert llm.server == "external" and llm.base_url and llm.api_key_env == "VLLM_API_KEY"
    # the name sent with every request is vLLM's --served-model-name in the k8s manifest
    dep = next(
        d
        for d in yaml.safe_load_all((INFRA / "vllm" / "vllm-server.yaml").read_text())
        if d and d.get("kind") == "Deployment"
    )
    args = dict(
        a[2:].split("=", 1) for a in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    assert llm.model == args["served-model-name"]


def test_network_namespaces_work_here():
    """Preconditions of test_ray_two_nodes.py, as a failure with the reason rather than a skip."""
    ip = shutil.which("ip")
    assert ip, (
        "iproute2's `ip` is not on PATH: the two-node Ray test needs it (apt-get install iproute2)"
    )
    assert os.geteuid() == 0, (
        "the two-node Ray test needs root for `ip netns add` (or CAP_SYS_ADMIN)"
    )
    ns = f"pcchk{uuid.uuid4().hex[:8]}"
    add = subprocess.run(
        [ip, "netns", "add", ns], capture_output=True, text=True, timeout=30, check=False
    )
    assert add.returncode == 0, f"`ip netns add` is not permitted here: {add.stderr.strip()}"
    try:
        up = subprocess.run(
            [ip, "netns", "exec", ns, ip, "link", "set", "lo", "up"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert up.returncode == 0, f"`ip netns exec` failed: {up.stderr.strip()}"
        links = subprocess.run(
            [ip, "netns", "exec", ns, ip, "-o", "link"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
        # only loopback inside: a cluster started there is reachable from nowhere else
        assert [ln.split(":")[1].strip() for ln in links.splitlines()] == ["lo"], links
    finally:
        subprocess.run([ip, "netns", "del", ns], check=False, timeout=30)
    assert (
        ns
        not in subprocess.run(
            [ip, "netns", "list"], capture_output=True, text=True, check=False
        ).stdout
    )


def test_corpus_root_on_an_object_store_reads_through_fsspec(corpora_root):
    """A corpus whose root is a remote fsspec URI is listed and decoded without a local path.

    fsspec's in-memory filesystem stands in for the bucket (s3fs is not installed in the dev venv
    and no bucket is reachable here); an `s3://` root takes the same fsspec calls in the readers
    and in `dataprep.audio.decode`, only the backend differs.
    """
    import fsspec
    import numpy as np

    from dataprep.audio import decode
    from dataprep.core.config import CorpusConfig
    from dataprep.core.sample import SampleRef
    from dataprep.corpora import read_corpus

    src = corpora_root / "esc50_mini"
    bucket = f"memory://polyclap-test-{uuid.uuid4().hex[:8]}/esc50"
    fs = fsspec.filesystem("memory")
    for p in src.rglob("*"):
        if p.is_file():
            fs.pipe(f"{bucket}/{p.relative_to(src)}", p.read_bytes())
    try:
        remote = [
            r
            for r in read_corpus(
                CorpusConfig(name="esc50", reader="esc50", root=bucket, max_items=3)
            )
            if isinstance(r, SampleRef)
        ]
        local = [
            r
            for r in read_corpus(
                CorpusConfig(name="esc50", reader="esc50", root=str(src), max_items=3)
            )
            if isinstance(r, SampleRef)
        ]
        assert len(remote) == 3 and [r.source_id for r in remote] == [r.source_id for r in local]
        assert all(r.audio.startswith("memory://") for r in remote), [r.audio for r in remote]
        for r, lr in zip(remote, local, strict=True):
            assert r.labels == lr.labels and r.license == lr.license
            a, b = decode(r.audio), decode(lr.audio)
            assert a.sample_rate_hz == b.sample_rate_hz and np.array_equal(a.samples, b.samples)
    finally:
        fs.rm(bucket.split("/esc50")[0], recursive=True)
