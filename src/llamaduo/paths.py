"""The pipeline's files that code outside the stages reads (the loop, the CLI, the registry), declared once.

The stages take their paths from the command line as `dvc.yaml` declares them; `tests/test_dvc_deps.py`
checks that every path here is one `dvc.yaml` declares, so the two cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

# stage outputs (dvc.yaml `outs`, `metrics`, `plots`)
BASE_MODEL = Path("models/base")
ADAPTER = Path("models/adapter")
MERGED = Path("models/merged")
BASELINE = Path("metrics/baseline.json")
SUMMARY = Path("metrics/summary.json")
METRICS_DIR = Path("metrics")

# written by the loop and the CLI, read by stages or DVC
HISTORY = Path("metrics/history.json")        # one row per cycle: `dvc plots show` draws score against volume
CHAMPION = Path("metrics/champion.json")      # the registry's champion as the gate sees it (a dep of `report`)
COST = Path("metrics/cost.json")
COST_PLOT = Path("metrics/plots/cost.png")
ESTIMATE = Path("metrics/estimate.json")      # each cycle's pre-flight estimate, made before it ran
REPORT = Path("metrics/report.html")          # the report stage writes it; the loop rewrites it with the history

# working state outside DVC and git
LOOP_STATE = Path(".llamaduo/loop.json")
LOOP_LOCK = Path(".llamaduo/loop.lock")       # held by the running loop (its pid and host inside)
