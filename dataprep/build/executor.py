"""The executor: runs the build on Ray. The only module of ``dataprep`` that imports Ray.

Works the same with an embedded local Ray (``ray.init()`` in a plain script) and on a cluster
(``ray job submit``). The driver scans the corpora (threads); tasks: one fingerprint pass per
evaluation corpus, one build per shard. A shard task receives the manifest path and its row
range, never row dicts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray

from dataprep import curation, dedup
from dataprep.build import manifest, remote
from dataprep.build.finalize import (
    finalize_build,
    remove_leftovers,
    shard_is_done,
    versions,
    write_dataset_card,
)
from dataprep.build.plan import (
    BuildError,
    Plan,
    ShardTask,
    build_signature,
    check_or_write_plan,
    check_signature,
    plan_shards,
)
from dataprep.build.progress import BuildProgress
from dataprep.build.shard import build_shard
from dataprep.core import atomic, features, shards, storage
from dataprep.core.config import CorpusConfig, DataConfig
from dataprep.core.configfile import config_to_dict
from dataprep.corpora._common import CorpusRoot

log = logging.getLogger("polyclap.build")

EVAL_REJECTS = remote.EVAL_REJECTS
SHARD_TASK_RETRIES = 2


@ray.remote
def _eval_fingerprint_task(cfg_json: str, corpus: CorpusConfig) -> tuple[list[Any], list[Any]]:
    cfg = DataConfig.model_validate_json(cfg_json)
    return dedup.fingerprint_eval_corpus(corpus, cfg.build.audio, cfg.features.sample_rate_hz)


@ray.remote
class _ScorerActor:
    """The curation model, loaded once per actor by the injected factory (the entry script
    builds it: ``dataprep`` never imports ``model``); shard tasks send it batches of pairs."""

    def __init__(self, factory: Any, num_threads: float) -> None:
        import torch

        torch.set_num_threads(max(1, int(num_threads)))  # fixed threads: stable float sums
        self.score = factory()

    def ready(self) -> bool:
        return True

    def score_batch(self, waves: list[Any], sample_rate: int, texts: list[list[str]]) -> Any:
        return self.score(waves, sample_rate, texts)


class _ActorScore:
    """A :data:`dataprep.curation.ScoreFn` that asks a scorer actor (inside a shard task)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def __call__(self, waves: list[Any], sample_rate: int, texts: list[list[str]]) -> Any:
        return ray.get(self.actor.score_batch.remote(waves, sample_rate, texts))


def start_scorers(cfg: DataConfig, factory: Any) -> list[Any]:
    """``build.curation.num_actors`` scorer actors, each with its model loaded (CPU, or one GPU
    each with ``device: cuda``). Started and awaited before any shard task, so the tasks that
    wait on them can never hold the resources an actor still needs."""
    c = cfg.build.curation
    if factory is None:
        raise BuildError("build.curation.model is set but no scorer was injected (the entry "
                         "script pipelines/build_shards.py builds it from the config)")  # fmt: skip
    res = ray.cluster_resources()
    spare = res.get("CPU", 0) - c.num_actors * c.num_cpus
    if spare < cfg.build.shards.num_cpus_per_task:
        raise BuildError(
            f"build.curation reserves {c.num_actors} x {c.num_cpus} CPUs for its scorer actors; "
            f"{spare:g} of the cluster's {res.get('CPU', 0):g} are left, fewer than one shard "
            f"task needs ({cfg.build.shards.num_cpus_per_task:g}): lower curation.num_cpus or "
            f"num_actors, or give the build more CPUs (--num-cpus)"
        )
    gpus = 1 if c.device == "cuda" else 0
    if gpus and res.get("GPU", 0) < c.num_actors:
        raise BuildError(
            f"build.curation.device=cuda needs {c.num_actors} GPUs, the cluster has "
            f"{res.get('GPU', 0):g}"
        )
    opts = {"num_cpus": c.num_cpus, "num_gpus": gpus, "max_restarts": 1, "max_task_retries": 2}
    actors = [_ScorerActor.options(**opts).remote(factory, c.num_cpus) for _ in range(c.num_actors)]
    try:
        ray.get([a.ready.remote() for a in actors])
    except ray.exceptions.RayActorError as e:
        for a in actors:
            ray.kill(a)
        raise BuildError(f"the curation model {c.model} did not load in its actor: {e}") from None
    log.info("curation: %d scorer actor(s) loaded %s on %s", len(actors), c.model, c.device)
    return actors


@ray.remote
def _shard_task(
    cfg_json: str, out: str, task: ShardTask, manifest_path: str, eval_index: Any,
    scorer: Any = None,
) -> dict[str, Any]:  # fmt: skip
    logging.basicConfig(level=logging.INFO)
    cfg = DataConfig.model_validate_json(cfg_json)
    # One task per reserved CPU: torch's intra-op pool would otherwise start a thread per core
    # in every worker and oversubscribe the node (resampling and the STFT run in torch).
    import torch

    torch.set_num_threads(max(1, int(cfg.build.shards.num_cpus_per_task)))
    work = remote.workdir(cfg, out) if storage.is_remote(out) else Path(out)
    if storage.is_remote(out):
        manifest_path = str(remote.local_manifest(out, work))
    rows = manifest.read_manifest_range(manifest_path, task.start, task.stop)
    node_id = ray.get_runtime_context().get_node_id()
    score = _ActorScore(scorer) if scorer is not None else None
    summary = build_shard(cfg, work, task, rows, eval_index, node_id=node_id, score=score)
    if storage.is_remote(out):
        remote.publish_shard(work, out, task.split, task.name)
    return summary


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    t = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t


def scan(cfg: DataConfig) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """All corpora listed side by side, in driver threads: manifest rows and reader rejects.

    The driver has the readers imported already, and listing (a directory walk, a bucket's
    pages, a manifest file) waits on I/O; a Ray task per corpus made the build's first step
    wait for a worker process to start and import the shard task's modules (~3 s of torch,
    scipy.signal, ...) before the scan could begin, with the other workers idle
    (bench/RESULTS.md, scaling)."""
    corpora = cfg.build.corpora
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(corpora)))) as pool:
        scans = list(pool.map(manifest.scan_corpus, corpora))
    rows = [r for refs, _ in scans for r in refs]
    rejects = [r for _, rj in scans for r in rj]
    log.info(
        "scanned %d corpora: %d inputs, %d rejected by readers",
        len(cfg.build.corpora), len(rows), len(rejects),
    )  # fmt: skip
    return rows, rejects


def eval_index(cfg: DataConfig, out: Path) -> tuple[dedup.DedupIndex | None, int]:
    """The decontamination index of ``build.eval_corpora`` (None when off); the number of
    evaluation items that could not be read, written to ``eval_rejects.parquet``."""
    b = cfg.build
    if not (b.eval_corpora and b.dedup.decontaminate):
        return None, 0
    cfg_json = DataConfig.view(cfg).model_dump_json()
    results = ray.get([_eval_fingerprint_task.remote(cfg_json, c) for c in b.eval_corpora])
    index = dedup.build_eval_index(
        (clip for clips, _ in results for clip in clips), b.dedup.near_threshold
    )
    rejects = [r.as_row() for _, rj in results for r in rj]
    manifest.write_table(out / EVAL_REJECTS, rejects, manifest.REJECT_SCHEMA)
    log.info(
        "decontamination: indexed %d segments of %d evaluation corpora (%d items unreadable, "
        "see %s)", len(index), len(b.eval_corpora), len(rejects), EVAL_REJECTS,
    )  # fmt: skip
    return index, len(rejects)


def _max_inflight(cfg: DataConfig) -> int:
    s = cfg.build.shards
    if s.max_parallel_tasks:
        return s.max_parallel_tasks
    cpus = ray.available_resources().get("CPU", 1)
    return max(1, int(cpus / s.num_cpus_per_task)) * 2


def execute(
    cfg: DataConfig, out: str | Path, manifest_path: Path, todo: list[ShardTask], index: Any,
    scorer_factory: Any = None,
) -> None:  # fmt: skip
    """Run the shard tasks, a bounded number in flight, logging progress as they finish.
    With ``build.curation`` on, the tasks of the curated splits score through scorer actors
    (``scorer_factory`` loads the model in each)."""
    cfg_json = DataConfig.view(cfg).model_dump_json()
    index_ref = ray.put(index)
    opts = {"num_cpus": cfg.build.shards.num_cpus_per_task, "max_retries": SHARD_TASK_RETRIES}
    cur = cfg.build.curation
    curated = bool(cur) and any(t.split in cur.splits for t in todo)
    actors = start_scorers(cfg, scorer_factory) if curated else []
    limit = _max_inflight(cfg)
    progress = BuildProgress(len(todo))
    queue, pending = list(todo), []
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                task = queue.pop(0)
                on = actors and task.split in cur.splits
                scorer = actors[len(queue) % len(actors)] if on else None
                pending.append(
                    _shard_task.options(**opts).remote(
                        cfg_json, str(out), task, str(manifest_path), index_ref, scorer
                    )
                )
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                progress.update(ray.get(ref))
    finally:
        progress.close()
        for a in actors:
            ray.kill(a)


def corpus_roots(cfg: DataConfig) -> dict[str, str]:
    """Each training corpus's root as this build resolved it (an absolute path or a URI)."""
    out = {}
    for c in cfg.build.corpora:
        root = CorpusRoot(c.root)
        out[c.name] = root.uri_of(root.root)
    return out


def _record(
    cfg: DataConfig, plan: Plan, counts: dict[str, Any], parts: list[dict[str, Any]],
    timings: dict[str, float], built: int, eval_rejects: int,
) -> dict[str, Any]:  # fmt: skip
    return {
        "config": config_to_dict(cfg),
        # Samples name their audio relative to these (source_uri); recorded once, here.
        "corpus_roots": corpus_roots(cfg),
        "feature_fingerprint": features.feature_fingerprint(cfg.features),
        "feature_fields": features.fingerprint_fields(cfg.features),
        "signature": build_signature(cfg),
        "versions": versions(),
        "counts": counts,
        "inputs": len(plan.rows),
        "eval_rejects": eval_rejects,
        "timings": timings,
        "shards_built_this_run": built,
        "tasks": [
            {
                "split": t.split,
                "name": t.name,
                "samples": p["entry"]["samples"],
                "rejects": p["rejects"],
                **p["stats"],
            }
            for t, p in zip(plan.shards, parts)
        ],
    }


def todo_shards(out: str | Path, work: Path, plan: Plan) -> list[ShardTask]:
    """The shards still to build: checked against the bucket listing for a remote out."""
    if storage.is_remote(out):
        done = remote.done_shards(str(out), work, plan.shards)
        todo = [t for t in plan.shards if (t.split, t.name) not in done]
    else:
        todo = [t for t in plan.shards if not shard_is_done(work, t.split, t.name)]
    per_split = ", ".join(f"{s}={sum(t.split == s for t in plan.shards)}" for s in plan.splits())
    log.info(
        "plan: %d shards (%s); %d already done, %d to build",
        len(plan.shards), per_split, len(plan.shards) - len(todo), len(todo),
    )  # fmt: skip
    return todo


def run_build(
    cfg: DataConfig, out: str | os.PathLike[str], scorer_factory: Any = None
) -> dict[str, Any]:
    """Scan, plan, execute and finalize a shard set under ``out`` (a local folder or an
    ``s3://``/``gs://`` URI: staged in local scratch, see :mod:`.remote`). Returns the record.
    ``scorer_factory``: a picklable callable returning a :data:`dataprep.curation.ScoreFn`
    (needed with ``build.curation.model``; the entry script builds it)."""
    out = storage.location(out)
    is_remote = isinstance(out, str)
    work = remote.workdir(cfg, out) if is_remote else out
    if not cfg.build.corpora:
        raise BuildError("build.corpora is empty: nothing to build")
    if is_remote:
        remote.pull_plan(out, work)  # the bucket's plan.json decides, not a stale scratch one
    # Every refusal comes before the first write into ``out`` (a refused rerun used to
    # overwrite the old build's manifest.parquet first): the config here, the inputs below.
    check_signature(work, cfg)
    timings: dict[str, float] = {}
    with _timed(timings, "scan_s"):
        rows, scan_rejects = scan(cfg)
    if not rows:
        raise BuildError(
            "the configured corpora yielded no usable inputs (see reader rejects above)"
        )
    with _timed(timings, "plan_s"):
        plan = plan_shards(rows, cfg)
        work.mkdir(parents=True, exist_ok=True)
        check_or_write_plan(work, cfg, plan)
        if n_tmp := remove_leftovers(work):
            log.info("removed %d temp files of an interrupted run", n_tmp)
        manifest_path = manifest.write_manifest(work, plan.rows)
        if is_remote:
            remote.push_plan(work, out)
    todo = todo_shards(out, work, plan)
    with _timed(timings, "eval_index_s"):
        index, eval_rejects = eval_index(cfg, work)
    with _timed(timings, "execute_s"):
        execute(cfg, out, manifest_path, todo, index, scorer_factory)
    with _timed(timings, "finalize_s"):
        if is_remote:
            remote.pull_parts(out, work, plan.shards)
        counts, parts = finalize_build(
            work, plan, scan_rejects, cfg.build.dedup, cfg.build.curation
        )
        card = write_dataset_card(work, plan.splits(), cfg.build.audio.keep_audio)
        scores = [p for s in plan.splits() if (p := work / s / curation.SCORES).is_file()]
    record = _record(cfg, plan, counts, parts, timings, len(todo), eval_rejects)
    atomic.atomic_write_json(work / shards.BUILD_JSON, record)
    if is_remote:
        remote.publish_final(work, out, plan.splits(), card, *scores)
    return record


def build_on_ray(
    cfg: DataConfig,
    out: str | os.PathLike[str],
    num_cpus: int | None = None,
    scorer_factory: Any = None,
) -> dict[str, Any]:
    """:func:`run_build` on Ray: inside ``ray job submit`` (``RAY_ADDRESS`` set) it joins that
    cluster, otherwise it starts an embedded local Ray with ``num_cpus``; shut down afterwards.
    Workers import this checkout's packages (its root is put on their ``PYTHONPATH``)."""
    import dataprep

    repo = str(Path(dataprep.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    init_kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": {"PYTHONPATH": path}},
        "logging_level": logging.WARNING,
    }
    if not os.environ.get("RAY_ADDRESS"):
        init_kwargs.update(include_dashboard=False, num_cpus=num_cpus)
    ray.init(**init_kwargs)
    try:
        return run_build(cfg, out, scorer_factory)
    finally:
        ray.shutdown()
