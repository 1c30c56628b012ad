#!/usr/bin/env bash
# `make bench`: every CPU benchmark, each printing its side-by-side ratios. ~15 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for b in normalize build_shards augment loader gradcache; do
  if [ -f "bench/$b.py" ]; then
    echo "=== bench/$b.py ($(date -u +%FT%TZ))"
    "$PY" "bench/$b.py"
  fi
done
