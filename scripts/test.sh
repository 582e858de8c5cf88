#!/usr/bin/env bash
# Set up, then run the test suite (what CI runs). One thread per test process, two processes (pytest-xdist).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# tests/reporting/test_html_report.py opens metrics/report.html in headless Chromium (Debian's package); apt runs only
# without a prompt (root, or passwordless sudo), as setup.sh does for tcmalloc; otherwise that test says how
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=skip; fi
  if [ "$SUDO" != skip ]; then
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null || true
  else
    echo "note: chromium not installed (needs root: apt-get install -y chromium); the HTML report test will fail" >&2
  fi
fi
. .venv/bin/activate
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
# two workers, one per core (each test process runs one thread): ~25 min serial, ~18 min so on this machine;
# a module whose fixture is expensive (the pipeline run, a Ray cluster) is one xdist_group, run on one worker
pytest -n 2 --dist loadgroup "$@"
