#!/usr/bin/env bash
# Rewrite constraints.txt from a complete, working .venv (runtime deps + [test] + [llm] extras).
# Run after changing a range in pyproject.toml and installing into .venv; commit the result.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
{
  echo "# Exact versions tested together (pip freeze of a complete .venv: runtime + [test] + [llm])."
  echo "# make installs through it: pip install -c constraints.txt -e \".[test]\". Regenerate with"
  echo "# infra/install/lock.sh after changing a range in pyproject.toml."
  # local version labels (torch 2.13.0+cpu) dropped: ==2.13.0 matches the CPU and the CUDA build
  "$VENV/bin/pip" freeze --exclude-editable | sed -E 's/\+[a-z0-9.]+$//' | grep -v '^-e '
} > constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pins"
