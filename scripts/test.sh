#!/usr/bin/env bash
# Set up, then run the test suite (what CI runs). One thread per process: two contend badly on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
pytest "$@"
