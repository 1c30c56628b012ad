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
# The object-storage loader on a 664 MB set (an epoch long enough that per-epoch startup does
# not decide the ratio; bench/RESULTS.md has the small set too).
echo "=== bench/loader_s3.py --samples 16000 --shard-count 64 ($(date -u +%FT%TZ))"
"$PY" bench/loader_s3.py --samples 16000 --shard-count 64 --repeat 3
echo "=== bench/search.py ($(date -u +%FT%TZ))"
"$PY" bench/search.py
echo "=== make bench done ($(date -u +%FT%TZ))"
