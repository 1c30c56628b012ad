"""Evaluate a CLAP checkpoint on the tasks of a task file; print and write a comparison table.

    python jobs/evaluate.py --checkpoint outputs/demo/run/final --tasks configs/tasks/demo.yaml \
        [--out outputs/demo/eval/results.json] [--compare PREVIOUS_CHECKPOINT]

--checkpoint takes an export (``final/``: model.safetensors + config.json), a run directory,
or a DeepSpeed checkpoint directory this project wrote (its marker's checksums verified, its
files read weights-only), or an export synced to a bucket (``s3://.../final``, ``train.sync_to``:
downloaded to ``$POLYCLAP_CACHE``, checksums checked, safetensors only; give --out). Task corpus
roots may be ``s3://``, ``gs://`` or ``http(s)://`` too. Nothing is unpickled: an old
``model.pt`` export is refused.
Columns: the checkpoint, the same architecture with seeded random weights (``random-init``,
the floor every number must beat), and ``--compare`` when given. Evaluation
audio is read with the corpus readers and featurized by the training code with the model's
feature config; featurized sets are cached per feature fingerprint (--cache-dir).
Writes ``--out`` (JSON, every number) and the Markdown table beside it (``.md``).
Task types: zero_shot, retrieval, emotion, keyword_spotting, linear_probe, few_shot,
sound_event_detection
(see dataprep/evaluation/tasks.py and configs/tasks/*.yaml).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--checkpoint", required=True, help="final/ export, run dir or DeepSpeed checkpoint dir"
    )
    p.add_argument("--tasks", required=True, help="task YAML (e.g. configs/tasks/demo.yaml)")
    p.add_argument(
        "--out", default=None, help="result JSON (default: <checkpoint>/eval/results.json)"
    )
    p.add_argument("--compare", default=None, help="a previous checkpoint as an extra column")
    p.add_argument("--only", action="append", default=None, help="run only this task (repeatable)")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="featurized eval sets (default: the task file's cache_dir)",
    )
    p.add_argument("--no-random-init", action="store_true", help="skip the random-init column")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    import torch

    from dataprep.core import storage
    from dataprep.core.atomic import atomic_write_bytes, atomic_write_json
    from dataprep.core.config import ConfigError
    from dataprep.evaluation.runner import Column, evaluate, markdown_table
    from dataprep.evaluation.tasks import load_tasks
    from model.clap import build_model
    from model.weights import load_for_eval

    def where(loc: str) -> str:
        return loc if storage.is_remote(loc) else str(Path(loc).resolve())

    if storage.is_remote(args.checkpoint) and not args.out:
        print(f"evaluate: --checkpoint {args.checkpoint} is remote: give --out", file=sys.stderr)
        return 2
    try:
        task_file = load_tasks(args.tasks, args.only)
        for root in {t.corpus.root for t in task_file.tasks if storage.is_remote(t.corpus.root)}:
            # endpoint and credentials up front: a reader would list an unreachable root's
            # items as missing files instead of saying so
            storage.listing(root)
        model, cfg, tok = load_for_eval(args.checkpoint, args.device)
        columns = [Column("checkpoint", model, cfg, tok, where(args.checkpoint))]
        if not args.no_random_init:
            # Seeded: the floor is the same numbers on every run.
            torch.manual_seed(task_file.defaults.seed)
            rand = build_model(cfg.model, cfg.features.n_mels).eval()
            columns.append(
                Column(
                    "random_init", rand, cfg, tok, f"build_model(seed={task_file.defaults.seed})"
                )
            )
        if args.compare:
            pm, pcfg, ptok = load_for_eval(args.compare, args.device)
            columns.append(Column("previous", pm, pcfg, ptok, where(args.compare)))
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError, KeyError, OSError) as e:
        # one line: a state_dict mismatch spans several lines; keep them, joined
        print(
            "evaluate: " + " | ".join(ln.strip() for ln in str(e).splitlines() if ln.strip()),
            file=sys.stderr,
        )
        return 2

    cache_dir = args.cache_dir or task_file.cache_dir
    result = evaluate(task_file, columns, cache_dir, args.device)
    result["tasks_file"] = str(Path(args.tasks).resolve())
    out = Path(args.out) if args.out else Path(args.checkpoint) / "eval" / "results.json"
    table = markdown_table(result)
    atomic_write_json(out, result)
    atomic_write_bytes(out.with_suffix(".md"), table.encode())
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    ckpt = Path(args.checkpoint)
    if (ckpt / "README.md").is_file() and (ckpt / "model.safetensors").is_file():
        from model.card import write_model_card  # an export's card shows its latest table

        write_model_card(ckpt, cfg, eval_table=out.with_suffix(".md"))
        print(f"model card: {ckpt / 'README.md'}")
    failed = [n for n, r in result["tasks"].items() if not r["metrics"]]
    if failed:
        print(f"evaluate: {len(failed)} task(s) could not run: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
