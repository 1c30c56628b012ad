"""Every infra/ manifest parses and has the keys and the internal consistency its tool needs.

No cluster, no network: the Ray launcher YAML, KubeRay and Kubernetes manifests are checked
against the schema keys written out below (and the sizing rules infra/README.md explains); the
DeepSpeed presets go through DeepSpeed's own config validation after being merged into the
trainer's config; the RayJob entrypoint's config and overrides go through our load_config; the
shell scripts run for real in their dry-run form. SLURM itself cannot run here: the sbatch test
puts two small stand-ins for `scontrol`/`srun` on PATH (they only expand the node list and run
the per-node command once per node) and checks what the script hands to launch.sh.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
GiB = 1024**3
# Known instance sizes used in cluster-aws.yaml (memory in GiB), to check object-store sizing.
AWS_MEMORY_GIB = {"m7i.2xlarge": 32, "m7i.4xlarge": 64, "m7i.8xlarge": 128}


def _manifests() -> list[Path]:
    return sorted(
        p
        for p in INFRA.rglob("*")
        if p.suffix in {".yaml", ".yml", ".json"} and "install" not in p.relative_to(INFRA).parts
    )


def _docs(path: Path) -> list[dict]:
    if path.suffix == ".json":
        return [json.loads(path.read_text())]
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _qty(v: str | int) -> float:
    """Kubernetes quantity -> number (bytes for memory, cores for cpu)."""
    s = str(v)
    units = {
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "m": 1e-3,
    }
    for u, f in units.items():
        if s.endswith(u):
            return float(s[: -len(u)]) * f
    return float(s)


def _require(d: dict, keys: set[str], where: str) -> None:
    missing = keys - set(d)
    assert not missing, f"{where}: missing keys {sorted(missing)}"


# --------------------------------------------------------------------------- every file parses


CHECKED: dict[str, str] = {}  # manifest path -> test that checks its schema (filled below)


def checks(*paths: str):
    def deco(fn):
        for p in paths:
            CHECKED[p] = fn.__name__
        return fn

    return deco


def test_every_manifest_parses_and_has_a_schema_check():
    found = _manifests()
    assert found, "no manifests under infra/"
    for p in found:
        docs = _docs(p)
        assert docs and all(isinstance(d, dict) for d in docs), p
    rel = {str(p.relative_to(REPO)) for p in found}
    assert rel == set(CHECKED), (
        f"manifests without a schema check: {sorted(rel - set(CHECKED))}; "
        f"checks for missing files: {sorted(set(CHECKED) - rel)}"
    )


# --------------------------------------------------------------------------- Ray


@checks("infra/ray/cluster-aws.yaml")
def test_ray_cluster_launcher_yaml_passes_rays_own_validation():
    """`ray up` fills provider defaults, then validates against ray-schema.json (no extra keys)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _docs(INFRA / "ray/cluster-aws.yaml")[0]
    validate_config(prepare_config(cfg))


@checks("infra/ray/cluster-aws.yaml")
def test_ray_cluster_launcher_yaml():
    cfg = _docs(INFRA / "ray/cluster-aws.yaml")[0]
    _require(
        cfg,
        {
            "cluster_name",
            "max_workers",
            "provider",
            "head_node_type",
            "available_node_types",
            "head_start_ray_commands",
            "worker_start_ray_commands",
        },
        "cluster-aws.yaml",
    )
    _require(cfg["provider"], {"type", "region"}, "provider")
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    for name, t in types.items():
        _require(t, {"resources", "node_config"}, f"node type {name}")
        assert t["node_config"]["InstanceType"] in AWS_MEMORY_GIB, name
    workers = {n: t for n, t in types.items() if n != cfg["head_node_type"]}
    assert workers and sum(t["max_workers"] for t in workers.values()) <= cfg["max_workers"]
    for t in workers.values():
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"]
    head_cmd = " ".join(cfg["head_start_ray_commands"])
    worker_cmd = " ".join(cfg["worker_start_ray_commands"])
    assert "ray start --head" in head_cmd and "--autoscaling-config" in head_cmd
    assert "ray start --address=$RAY_HEAD_IP:" in worker_cmd
    # the head runs no shard tasks: its declared resources agree with its start command
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and "--num-cpus=0" in head_cmd
    # object store sizing: well below the node's RAM, and /dev/shm (docker --shm-size) holds it
    shm = next(o for o in cfg["docker"]["run_options"] if o.startswith("--shm-size"))
    shm_bytes = _qty(shm.split("=")[1].split()[0].replace("g", "Gi"))
    for cmd, ts in ((head_cmd, [head]), (worker_cmd, list(workers.values()))):
        store = int(re.search(r"--object-store-memory=(\d+)", cmd).group(1))
        assert store <= shm_bytes
        for t in ts:
            ram = AWS_MEMORY_GIB[t["node_config"]["InstanceType"]] * GiB
            assert store <= 0.2 * ram, (store, ram)
            cpus = t["resources"].get("CPU", 0)
            if cpus:  # heap per shard task (1 CPU each) after object store and ~4 GiB for Ray/OS
                assert (ram - store - 4 * GiB) / cpus >= 2 * GiB


def _container(pod_template: dict) -> dict:
    containers = pod_template["spec"]["containers"]
    assert len(containers) >= 1
    return containers[0]


def _check_pod_volumes(pod_template: dict, where: str) -> dict[str, dict]:
    vols = {v["name"]: v for v in pod_template["spec"].get("volumes", [])}
    for c in pod_template["spec"]["containers"]:
        for m in c.get("volumeMounts", []):
            assert m["name"] in vols, f"{where}: volumeMount {m['name']} has no volume"
    return vols


def _check_ray_cluster_spec(spec: dict, where: str) -> None:
    _require(spec, {"headGroupSpec", "workerGroupSpecs"}, where)
    assert spec.get("rayVersion") == _pinned("ray"), "rayVersion must match the pinned ray"
    groups = [("head", spec["headGroupSpec"])] + [
        (g["groupName"], g) for g in spec["workerGroupSpecs"]
    ]
    for name, g in groups:
        _require(g, {"rayStartParams", "template"}, f"{where} {name}")
        params = g["rayStartParams"]
        # KubeRay passes rayStartParams through as strings; a YAML int here is rejected
        assert all(isinstance(v, str) for v in params.values()), (
            f"{where} {name}: non-string rayStartParams"
        )
        c = _container(g["template"])
        _require(c, {"name", "image", "resources"}, f"{where} {name} container")
        limits = c["resources"]["limits"]
        mem = _qty(limits["memory"])
        store = int(params["object-store-memory"])
        assert store <= 0.25 * mem, f"{where} {name}: object store {store} vs memory {mem}"
        vols = _check_pod_volumes(g["template"], f"{where} {name}")
        shm = next(
            (vols[m["name"]] for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"), None
        )
        assert shm is not None and shm["emptyDir"]["medium"] == "Memory", (
            f"{where} {name}: no in-memory /dev/shm"
        )
        assert _qty(shm["emptyDir"]["sizeLimit"]) >= store, (
            f"{where} {name}: /dev/shm smaller than object store"
        )
        if "resources" in params:  # KubeRay's quoted-JSON form: '"{\"pipeline\": 1}"'
            assert isinstance(json.loads(json.loads(params["resources"])), dict)
        if name == "head":
            assert params["num-cpus"] == "0"
            continue
        assert g.get("minReplicas", 0) <= g["replicas"] <= g["maxReplicas"]
        cpus = int(params["num-cpus"])
        assert cpus == _qty(limits["cpu"]), f"{where} {name}: num-cpus != container cpu limit"
        heap_per_task = (mem - store - 2 * GiB) / cpus
        assert heap_per_task >= 2 * GiB, (
            f"{where} {name}: {heap_per_task / GiB:.1f} GiB per shard task"
        )


def _pinned(name: str) -> str:
    """The exact version of ``name`` in the lock (constraints.txt; pyproject.toml has ranges)."""
    text = (REPO / "constraints.txt").read_text()
    m = re.search(rf"^{re.escape(name)}==(\S+)$", text, flags=re.M | re.I)
    assert m, f"{name} is not pinned in constraints.txt"
    return m.group(1)


@checks("infra/ray/kuberay-raycluster.yaml")
def test_kuberay_raycluster():
    docs = {d["kind"]: d for d in _docs(INFRA / "ray/kuberay-raycluster.yaml")}
    rc = docs["RayCluster"]
    assert rc["apiVersion"] == "ray.io/v1"
    _require(rc["metadata"], {"name"}, "metadata")
    _check_ray_cluster_spec(rc["spec"], "RayCluster")
    pvc = docs["PersistentVolumeClaim"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]  # every pod writes shards to it
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for g in [rc["spec"]["headGroupSpec"], *rc["spec"]["workerGroupSpecs"]]
        for v in g["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {pvc["metadata"]["name"]}


@checks("infra/ray/kuberay-rayjob.yaml")
def test_kuberay_rayjob_runs_build_shards_with_a_valid_config():
    from model.config import load_config

    job = _docs(INFRA / "ray/kuberay-rayjob.yaml")[0]
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    _require(
        job["spec"], {"entrypoint", "rayClusterSpec", "shutdownAfterJobFinishes"}, "RayJob.spec"
    )
    _check_ray_cluster_spec(job["spec"]["rayClusterSpec"], "RayJob")
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**env)  # Ray checks the known fields' types (env_vars values must be strings)
    # unknown top-level fields would be taken as plugin names, so list the ones we allow
    assert set(env) <= {"env_vars", "working_dir", "py_modules", "pip", "excludes", "config"}
    assert env["env_vars"]["PYTHONPATH"] == "/app"
    # the entrypoint: the real script, a config in the repo, overrides our loader accepts
    cmd = job["spec"]["entrypoint"].split("&&")[-1].split()
    assert cmd[:2] == ["python", "pipelines/build_shards.py"] and (REPO / cmd[1]).is_file()
    cfg_path = cmd[cmd.index("--config") + 1]
    overrides = [a for a in cmd[cmd.index("--config") + 2 :] if "=" in a]
    cfg = load_config(REPO / cfg_path, overrides)  # raises ConfigError on an unknown key
    assert cfg.build.out.startswith("/mnt/shards")
    mounts = {
        m["mountPath"]
        for g in [
            job["spec"]["rayClusterSpec"]["headGroupSpec"],
            *job["spec"]["rayClusterSpec"]["workerGroupSpecs"],
        ]
        for m in _container(g["template"])["volumeMounts"]
    }
    assert "/mnt/shards" in mounts  # build.out is on the shared volume of every pod
    images = {
        _container(g["template"])["image"]
        for g in [
            job["spec"]["rayClusterSpec"]["headGroupSpec"],
            *job["spec"]["rayClusterSpec"]["workerGroupSpecs"],
        ]
    }
    assert len(images) == 1  # head and workers run the same code


def _entry_config(cmd: list[str]):
    """The config an example command line runs: ``--config FILE`` plus its ``key=value``
    overrides (and ``--shards``/``--out`` as the entry scripts map them), through load_config:
    an unknown key in an example is a ConfigError here, so the examples cannot rot."""
    from model.config import load_config

    overrides = [a for a in cmd[cmd.index("--config") + 2 :] if "=" in a and "/" not in a[:1]]
    for flag, key in (("--shards", "loader.shards"), ("--out", "train.out")):
        if flag in cmd:
            overrides.append(f"{key}={cmd[cmd.index(flag) + 1]}")
    return load_config(REPO / cmd[cmd.index("--config") + 1], overrides)


@checks("infra/ray/kuberay-rayjob-s3.yaml")
def test_kuberay_rayjob_builds_into_a_bucket_with_credentials_from_a_secret():
    secret, job = _docs(INFRA / "ray/kuberay-rayjob-s3.yaml")
    assert secret["kind"] == "Secret" and job["kind"] == "RayJob"
    spec = job["spec"]["rayClusterSpec"]
    _check_ray_cluster_spec(spec, "RayJob s3")
    cmd = job["spec"]["entrypoint"].split("&&")[-1].split()
    assert cmd[:2] == ["python", "pipelines/build_shards.py"]
    cfg = _entry_config(cmd)
    assert cfg.build.out.startswith("s3://") and cfg.build.scratch
    for g in _ray_groups(spec):
        c = _container(g["template"])
        assert cfg.build.scratch in {m["mountPath"] for m in c["volumeMounts"]}
        env = {e["name"]: e for e in c["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # botocore's env chain
            ref = env[key]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": secret["metadata"]["name"], "key": key}
            assert key in secret["stringData"]


def test_sbatch_examples_name_existing_config_keys():
    """Every ``sbatch infra/slurm/pretrain.sbatch ...`` example in the script's header (a bucket
    one among them) loads through the trainer's config path."""
    lines = (INFRA / "slurm/pretrain.sbatch").read_text().splitlines()
    examples = [
        ln.lstrip("# ").split()
        for ln in lines
        if ln.lstrip("# ").startswith("sbatch infra/slurm/pretrain.sbatch") and "..." not in ln
    ]
    cfgs = [_entry_config(cmd) for cmd in examples]
    assert any(c.loader.shards.startswith("s3://") and c.train.sync_to for c in cfgs), examples


@checks("infra/vllm/vllm-server.yaml")
def test_vllm_server_matches_the_llm_config():
    from dataprep.core.config import LLMConfig

    docs = {d["kind"]: d for d in _docs(INFRA / "vllm/vllm-server.yaml")}
    dep, svc = docs["Deployment"], docs["Service"]
    assert dep["apiVersion"] == "apps/v1" and svc["apiVersion"] == "v1"
    assert dep["spec"]["selector"]["matchLabels"] == dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]
    c = _container(dep["spec"]["template"])
    args = dict(a[2:].split("=", 1) for a in c["args"])
    _require(args, {"model", "served-model-name", "port"}, "vllm args")
    assert (
        int(args["port"]) == svc["spec"]["ports"][0]["targetPort"] == c["ports"][0]["containerPort"]
    )
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert "nvidia.com/gpu" in c["resources"]["limits"]
    assert {e["name"] for e in c["env"]} >= {"VLLM_API_KEY", "HF_HUB_OFFLINE"}
    _check_pod_volumes(dep["spec"]["template"], "vllm")
    # what infra/README.md tells the builder to use is a valid LLM config
    llm = LLMConfig(
        server="external",
        base_url=f"http://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}",
        model=args["served-model-name"],
        api_key_env="VLLM_API_KEY",
    )
    assert llm and llm.model == args["served-model-name"]


# --------------------------------------------------------------------------- auth and network


AUTHED = {  # manifests that listen beyond loopback -> the test that checks their auth and policy
    "infra/ray/cluster-aws.yaml": "test_ray_launcher_runs_with_token_auth",
    "infra/ray/kuberay-raycluster.yaml": "test_kuberay_token_auth_and_network_policy",
    "infra/ray/kuberay-rayjob.yaml": "test_kuberay_token_auth_and_network_policy",
    "infra/vllm/vllm-server.yaml": "test_vllm_requires_its_key_and_admits_only_the_builder",
}


def test_nothing_binds_all_interfaces_without_auth():
    for p in _manifests():
        rel = str(p.relative_to(REPO))
        if "0.0.0.0" in p.read_text():
            assert rel in AUTHED, f"{rel} binds 0.0.0.0 but no test checks its authentication"


def test_ray_launcher_runs_with_token_auth():
    cfg = _docs(INFRA / "ray/cluster-aws.yaml")[0]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cfg[key] if "ray start" in c]
        assert start and all("export RAY_AUTH_MODE=token;" in c for c in start), key
    head_cmd = " ".join(cfg["head_start_ray_commands"])
    # the dashboard/job API stays on the head's loopback; `ray dashboard` tunnels to it
    assert "--dashboard-host=127.0.0.1" in head_cmd and "0.0.0.0" not in head_cmd
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # same token everywhere
    rules = cfg["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]  # ssh only, no Ray port
    assert all(ip["CidrIp"] != "0.0.0.0/0" for r in rules for ip in r["IpRanges"])


def _ray_groups(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def test_kuberay_token_auth_and_network_policy():
    docs = {d["kind"]: d for d in _docs(INFRA / "ray/kuberay-raycluster.yaml")}
    job = _docs(INFRA / "ray/kuberay-rayjob.yaml")[0]
    specs = {"RayCluster": docs["RayCluster"]["spec"], "RayJob": job["spec"]["rayClusterSpec"]}
    policy = docs["NetworkPolicy"]
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["spec"]["policyTypes"] == [
        "Ingress"
    ]
    selected = policy["spec"]["podSelector"]["matchLabels"]
    for where, spec in specs.items():
        # KubeRay >= 1.5.1 generates the token Secret and sets RAY_AUTH_MODE/RAY_AUTH_TOKEN
        assert spec["authOptions"] == {"mode": "token"}, where
        assert tuple(int(x) for x in spec["rayVersion"].split(".")[:2]) >= (2, 52), where
        for g in _ray_groups(spec):
            labels = g["template"]["metadata"]["labels"]
            assert selected.items() <= labels.items(), f"{where}: a Ray pod outside the policy"
    peers, submitter = policy["spec"]["ingress"]
    assert peers == {"from": [{"podSelector": {"matchLabels": selected}}]}  # Ray pods: each other
    # the RayJob's submitter (a Job named after the RayJob) may reach the job API only
    assert submitter["from"] == [
        {"podSelector": {"matchLabels": {"job-name": job["metadata"]["name"]}}}
    ]
    head_ports = {
        p["name"]: p["containerPort"]
        for p in _container(specs["RayJob"]["headGroupSpec"]["template"])["ports"]
    }
    assert submitter["ports"] == [{"protocol": "TCP", "port": head_ports["dashboard"]}]
    assert (
        docs["RayCluster"]["spec"]["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    )


def test_vllm_requires_its_key_and_admits_only_the_builder():
    docs = {d["kind"]: d for d in _docs(INFRA / "vllm/vllm-server.yaml")}
    c = _container(docs["Deployment"]["spec"]["template"])
    assert "--api-key=$(VLLM_API_KEY)" in c["args"]  # Kubernetes expands $(VAR) from env
    env = {e["name"]: e for e in c["env"]}
    ref = env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is False and ref["name"] == "vllm-api-key"
    assert docs["Service"]["spec"].get("type", "ClusterIP") == "ClusterIP"
    policy = docs["NetworkPolicy"]["spec"]
    assert (
        policy["podSelector"]["matchLabels"]
        == docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    )
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": c["ports"][0]["containerPort"]}]
    (src,) = rule["from"]
    # exactly the builder pods, and they carry the same secret as the client's bearer token
    ray = {d["kind"]: d for d in _docs(INFRA / "ray/kuberay-raycluster.yaml")}["RayCluster"]["spec"]
    for g in _ray_groups(ray):
        labels = g["template"]["metadata"]["labels"]
        assert src["podSelector"]["matchLabels"].items() <= labels.items()
        key = {e["name"]: e for e in _container(g["template"])["env"]}["VLLM_API_KEY"]
        assert key["valueFrom"]["secretKeyRef"]["name"] == ref["name"]


# --------------------------------------------------------------------------- DeepSpeed


PRESETS = {
    "infra/deepspeed/ds_zero2_bf16.json": {"zero_stage": 2, "precision": "bf16"},
    "infra/deepspeed/ds_zero3_offload.json": {
        "zero_stage": 3,
        "precision": "bf16",
        "offload": True,
    },
}


@checks(*PRESETS)
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_ds_preset_is_a_valid_deepspeed_config(preset):
    """Merged into the trainer's config exactly as launch.sh does, DeepSpeed accepts it."""
    from deepspeed.runtime.config import DeepSpeedConfig

    from model.config import TrainConfig
    from model.training import make_ds_config

    raw = json.loads((REPO / preset).read_text())
    frag = {k: v for k, v in raw.items() if not k.startswith("_")}
    # a preset sets DeepSpeed knobs only; batch/optimizer/scheduler come from train.*
    assert not {
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "optimizer",
        "scheduler",
    } & set(frag)
    t = TrainConfig(**PRESETS[preset], ds_config=frag)
    cfg = make_ds_config(t, world_size=1)
    ds = DeepSpeedConfig(cfg)  # pydantic-validated: an unknown zero_optimization key raises
    assert ds.zero_optimization_stage == t.zero_stage
    assert ds.bfloat16_config.enabled
    offload = ds.zero_config.offload_optimizer
    assert (offload is not None and offload.device == "cpu") == bool(PRESETS[preset].get("offload"))


def test_hostfile_lines():
    lines = [
        ln
        for ln in (INFRA / "deepspeed/hostfile").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert len(lines) >= 2 and all(re.fullmatch(r"\S+ slots=\d+", ln) for ln in lines), lines


def _launch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHON=sys.executable, DRY_RUN="1", **env)
    return subprocess.run(
        ["bash", str(INFRA / "deepspeed/launch.sh"), *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_launch_script_builds_the_deepspeed_command(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nnode-a slots=8\nnode-b slots=8\n\nnode-c slots=8\n")
    r = _launch(
        {
            "HOSTFILE": str(hostfile),
            "NNODES": "2",
            "NO_SSH": "1",
            "NODE_RANK": "1",
            "PRESET": "ds_zero3_offload",
            "MASTER_PORT": "29555",
        },
        "--config",
        "configs/demo.yaml",
        "train.lr=0.001",
    )
    assert r.returncode == 0, r.stderr
    argv = r.stdout.split()
    assert argv[argv.index("--num_nodes") + 1] == "2"
    assert argv[argv.index("--node_rank") + 1] == "1" and "--no_ssh" in argv
    assert argv[argv.index("--master_addr") + 1] == "node-a"  # first host of the hostfile
    assert argv[argv.index("--master_port") + 1] == "29555"
    assert any(a.endswith("/jobs/pretrain.py") for a in argv)
    assert {
        "train.zero_stage=3",
        "train.precision=bf16",
        "train.offload=true",
        "train.lr=0.001",
    } <= set(argv)
    ds = next(a for a in argv if a.startswith("train.ds_config="))
    # printf %q escapes the JSON for the shell; unescape and parse it as the trainer will
    payload = json.loads(re.sub(r"\\(.)", r"\1", ds.split("=", 1)[1]))
    assert payload["zero_optimization"]["stage"] == 3 and "_comment" not in payload
    # ssh mode: no --no_ssh / --node_rank, the launcher reaches the other hosts itself
    r = _launch({"HOSTFILE": str(hostfile)}, "--config", "configs/demo.yaml")
    assert r.returncode == 0 and "--no_ssh" not in r.stdout and "--num_nodes 3" in r.stdout


@pytest.mark.parametrize(
    "env, message",
    [
        ({"NNODES": "5"}, "lists 2 hosts"),
        ({"NODE_RANK": "2", "NO_SSH": "1"}, "must be < NNODES"),
        ({"PRESET": "no_such_preset"}, "preset not found"),
        ({"HOSTFILE": "/nonexistent/hostfile"}, "hostfile not found"),
    ],
)
def test_launch_script_refuses_bad_settings(tmp_path, env, message):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    r = _launch({"HOSTFILE": str(hostfile), **env}, "--config", "configs/demo.yaml")
    assert r.returncode == 2 and message in r.stderr, (r.returncode, r.stderr)


def test_sbatch_script_wires_one_launcher_per_node(tmp_path):
    script = INFRA / "slurm/pretrain.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    directives = dict(
        (m.group(1), m.group(2))
        for m in re.finditer(r"^#SBATCH --([\w-]+)(?:=(\S+))?", script.read_text(), re.M)
    )
    _require(
        directives, {"nodes", "ntasks-per-node", "gpus-per-node", "signal", "requeue"}, "#SBATCH"
    )
    assert directives["ntasks-per-node"] == "1"  # one DeepSpeed launcher per node
    # Stand-ins for SLURM's tools (SLURM cannot run here): scontrol expands the node list, srun
    # runs the per-node command once per node with that node's SLURM_NODEID.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(
        '#!/usr/bin/env bash\n[ "$1 $2" = "show hostnames" ] && tr , "\\n" <<< "$3"\n'
    )
    (bin_dir / "srun").write_text(
        '#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
        'for ((i=0; i<SLURM_JOB_NUM_NODES; i++)); do SLURM_NODEID=$i "$@" || exit 1; done\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        SLURM_JOB_NUM_NODES="2",
        SLURM_JOB_NODELIST="gpu-a,gpu-b",
        SLURM_JOB_ID="4242",
        SLURM_GPUS_ON_NODE="8",
        SLURM_SUBMIT_DIR=str(REPO),
        LOG_DIR=str(tmp_path / "logs"),
        DRY_RUN="1",
        PYTHON=sys.executable,
        VENV=str(tmp_path / "novenv"),
    )
    r = subprocess.run(
        ["bash", str(script), "--config", "configs/demo.yaml"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "logs" / "hostfile-4242").read_text() == "gpu-a slots=8\ngpu-b slots=8\n"
    cmds = [ln.split() for ln in r.stdout.splitlines() if "pretrain.py" in ln]
    assert len(cmds) == 2
    for rank, argv in enumerate(cmds):
        assert argv[argv.index("--node_rank") + 1] == str(rank) and "--no_ssh" in argv
        assert argv[argv.index("--master_addr") + 1] == "gpu-a"
        assert argv[argv.index("--num_gpus") + 1] == "8"
        assert argv[argv.index("--hostfile") + 1] == str(tmp_path / "logs" / "hostfile-4242")
        assert "train.zero_stage=2" in argv and "train.precision=bf16" in argv  # default preset


# --------------------------------------------------------------------------- containers


def _dockerfile(name: str) -> str:
    return (INFRA / "docker" / name).read_text()


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_pin_what_the_project_pins(name):
    text = _dockerfile(name)
    assert text.startswith("# syntax=docker/dockerfile:1")  # heredocs and <Dockerfile>.dockerignore
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms, "no FROM"
    assert f"torch=={_pinned('torch')}" in text  # the same torch as the lock (CPU or CUDA build)
    py = re.search(r"python:?(3\.\d+)", text)
    assert py and py.group(1) in {"3.10", "3.11"}, "requires-python is >=3.10,<3.12"
    copied = [
        src
        for srcs in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)\s+\S+$", text, re.M)
        for src in srcs.split()
    ]
    for src in copied:
        assert (REPO / src).exists(), f"{name}: COPY source {src} missing"
    # the lock is in the image before anything is installed through it
    assert "constraints.txt" in copied, f"{name}: constraints.txt is not copied"
    ignore = (INFRA / "docker" / f"{name}.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore  # never ship the local venv into the image
    if name == "Dockerfile.gpu":
        assert "-c constraints.txt" in text  # the exact pins, not pyproject's ranges
        assert f"deepspeed=={_pinned('deepspeed')}" in text and "DS_BUILD_CPU_ADAM=1" in text
        assert "nvidia/cuda:" in text and "cudnn-devel" in text
    else:
        assert "infra/install/setup.sh" in text and "download.pytorch.org/whl/cpu" in text


def test_readme_mentions_only_existing_infra_files():
    readme = (INFRA / "README.md").read_text()
    paths = set(re.findall(r"(?<![\w/])((?:infra|configs|pipelines|jobs)/[\w./-]+\.\w+)", readme))
    assert paths, "README names no files"
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert missing == []
    for p in _manifests():  # and it documents every manifest
        assert str(p.relative_to(REPO)) in readme or p.name in readme, p
