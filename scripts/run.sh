#!/usr/bin/env bash
# Set up, then run one LlamaDuo cycle (`dvc repro`) with params.yaml (the offline default as shipped).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
llamaduo run
cat metrics/summary.json
