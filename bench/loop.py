"""The loop as shipped, from a fresh clone to its decision: `llamaduo loop` with no edits, on the offline default.

The repository's committed HEAD is cloned to a temp folder (`git clone`: what a new user gets, no outputs, no call
cache), and `llamaduo loop` runs there with the environment `llamaduo run` gets (no OMP_NUM_THREADS). Then the
figures are read from what the loop wrote, as a team would read them:

- `cycles`: per cycle (metrics/history.json) the synthetic volume, rows trained on, the gate metric's mean and 95%
  interval, paid and cached service calls, the cycle's wall (`wall_s`) and the pre-flight estimate made before it
  ran (`estimate_wall_s`, `estimate_calls`);
- `gate`: the last report's decision (metrics/summary.json: mode, estimate, bound, margin, prompts, alpha, power);
- `stopped_by`, `alpha_spent`: the loop's own record (.llamaduo/loop.json);
- `train`: the last cycle's train stage (rate, rows, resident memory over its steps);
- `loop_wall_s`: from the loop's start to its last commit.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/loop.py                 # ~40 minutes on 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python bench/loop.py --collect DIR   # the figures of a loop already run in DIR

Writes bench/results/loop.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CYCLE_KEYS = ("cycle", "volume", "train_rows", "synthetic_curated", "metric", "score", "ci95", "calls", "cached",
              "wall_s")
GATE_KEYS = ("passed", "mode", "metric", "reason", "power_warning")
TEST_KEYS = ("question", "estimate", "bound", "against", "alpha", "prompts", "sd", "detectable", "prompts_needed")
TRAIN_KEYS = ("rows", "steps", "wall_s", "steady_tokens_per_s", "peak_rss_mb", "rss_growth_mb", "dtype", "plan")


def git(work: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=work, check=True, capture_output=True, text=True).stdout.strip()


def collect(work: Path) -> dict:
    """The loop's figures from the project `work` it ran in."""
    import yaml

    metrics = work / "metrics"
    history = json.loads((metrics / "history.json").read_text())
    summary = json.loads((metrics / "summary.json").read_text())
    state = json.loads((work / ".llamaduo" / "loop.json").read_text())
    train = json.loads((metrics / "train.json").read_text())
    cycles = []
    for row in history:
        c = {k: row.get(k) for k in CYCLE_KEYS}
        est = row.get("estimate") or {}
        cycles.append(c | {"estimate_wall_s": est.get("wall_s"), "estimate_calls": est.get("calls")})
    last_commit = float(git(work, "log", "-1", "--format=%ct"))
    gate = summary.get("gate", {})
    return {
        "cycles": cycles,
        "gate": {k: gate.get(k) for k in GATE_KEYS} | {k: gate.get("test", {}).get(k) for k in TEST_KEYS},
        "stopped_by": state.get("stopped_by"),
        "alpha_spent": state.get("alpha_spent"),
        "train": {k: train.get(k) for k in TRAIN_KEYS},
        "loop_wall_s": round(last_commit - state["started_at"], 1),
        # the code the loop ran: the commit before the loop's own commits
        "code_commit": git(work, "log", "-1", "--format=%h", "--invert-grep", "--grep=^llamaduo ", "HEAD"),
        "params": {k: v for k, v in yaml.safe_load((work / "params.yaml").read_text()).items()
                   if k in ("loop", "gate", "train")},
    }


def main() -> None:
    from llamaduo import hardware
    from llamaduo.atomic import write_json

    ap = argparse.ArgumentParser()
    ap.add_argument("--collect", help="a project where `llamaduo loop` already ran: read its figures, run nothing")
    ap.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/loop.json"))
    args = ap.parse_args()
    if args.collect:
        result = collect(Path(args.collect)) | {"ran": "collected from a finished loop"}
    else:
        work = Path(tempfile.mkdtemp(prefix="llamaduo-loop-")) / "project"
        try:
            subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
            env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
            env["HF_HUB_OFFLINE"] = env.get("HF_HUB_OFFLINE", "1")
            load_start, t0 = os.getloadavg(), time.perf_counter()
            subprocess.run(["llamaduo", "loop"], cwd=work, check=True, env=env)
            result = collect(work) | {"process_wall_s": round(time.perf_counter() - t0, 1),
                                      "load_avg_start": [round(x, 2) for x in load_start],
                                      "load_avg_end": [round(x, 2) for x in os.getloadavg()]}
        finally:
            if args.keep:
                print(f"clone kept: {work}", file=sys.stderr)
            else:
                shutil.rmtree(work.parent, ignore_errors=True)
    write_json(args.out, result | {"machine": hardware.describe()})
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
