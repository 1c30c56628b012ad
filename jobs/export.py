"""Export a training checkpoint as a standard model directory (safetensors, no pickle).

    python jobs/export.py --checkpoint outputs/demo/run --out outputs/demo/export-step-300

--checkpoint takes a run directory (its latest complete checkpoint), its ``checkpoints/`` or one
``checkpoints/step-*`` directory. The checkpoint must carry this project's commit marker with
matching checksums; its DeepSpeed files are read with ``torch.load(weights_only=True)`` only.
Writes --out atomically: ``model.safetensors`` (fp32), ``config.json``, ``tokenizer.model``
(if the text tower uses ours), ``meta.json``; ``jobs/evaluate.py --checkpoint`` and
``model.weights.load_for_eval`` read it. A finished run already has one: ``<run>/final``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", required=True, help="run dir, its checkpoints/ or a step-* dir")
    p.add_argument("--out", required=True, help="export directory to write (replaced atomically)")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    from dataprep.core.config import ConfigError
    from model.checkpoint import COMPLETE, UntrustedCheckpoint, latest_checkpoint
    from model.weights import export_checkpoint

    src = Path(args.checkpoint)
    ckpt = (
        src
        if (src / COMPLETE).is_file()
        else latest_checkpoint(src.parent if src.name == "checkpoints" else src)
    )
    if ckpt is None:
        print(
            f"export: {src}: no complete checkpoint (expected a run directory with checkpoints/ "
            f"or a checkpoint directory with {COMPLETE})",
            file=sys.stderr,
        )
        return 2
    try:
        meta = json.loads((ckpt / COMPLETE).read_text())
        out = export_checkpoint(
            ckpt, Path(args.out), {"step": meta.get("step"), "world_size": meta.get("world_size")}
        )
    except (UntrustedCheckpoint, ConfigError, FileNotFoundError, ValueError, OSError) as e:
        print(
            "export: " + " | ".join(ln.strip() for ln in str(e).splitlines() if ln.strip()),
            file=sys.stderr,
        )
        return 2
    print(f"wrote {out} from {ckpt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
