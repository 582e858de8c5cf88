"""Sequential judging on the real pipeline: judgments paid against a full pass, and whether the decision changes.

The gate reads the judge's `precision` here (sequential judging applies only to a judge metric). On a project where
a whole cycle has run (e.g. `bench/cycle.py --keep`'s workspace: the bench edits its params.yaml, so give it a
scratch project), each variant sets `gate.metric: precision`, a gate mode, and `judge.rounds` 4 (sequential) or 1
(a full pass), and reruns `dvc repro judge report`. The cycle's judge calls are in the project's call cache, so every variant judges the
same answers with the same judgments, and a full pass costs no new call: the variants differ only in how many
judgments the stage asks for (eval.json's `sequential`) and in what the gate decides on them (summary.json).

Per mode (`threshold`: the lower bound against `gate.threshold`; `non_inferiority`: local minus the service per
prompt, against `-gate.margin`): `judgments_paid`, `judgments_full`, `saving` of the sequential run, its stop,
and both decisions.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/sequential.py --project DIR

Writes bench/results/sequential.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

MODES = ("threshold", "non_inferiority")


def run_variant(work: Path, mode: str, rounds: int) -> dict:
    import yaml

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["gate"] |= {"metric": "precision", "mode": mode}
    params["judge"]["rounds"] = rounds
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    subprocess.run(["dvc", "repro", "judge", "report"], cwd=work, check=True, env=env)
    ev = json.loads((work / "metrics" / "eval.json").read_text())
    gate = json.loads((work / "metrics" / "summary.json").read_text())["gate"]
    return {"sequential": ev.get("sequential"), "passed": gate.get("passed"), "reason": gate.get("reason"),
            "threshold": params["gate"]["threshold"], "margin": params["gate"]["margin"]}


def main() -> None:
    from llamaduo import hardware
    from llamaduo.atomic import write_json

    ap = argparse.ArgumentParser()
    ap.add_argument("--project", required=True, help="a project where a whole cycle ran (its call cache holds the judgments)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/sequential.json"))
    args = ap.parse_args()
    project = Path(args.project)
    load_start = os.getloadavg()
    original = (project / "params.yaml").read_text()
    result: dict = {"modes": {}}
    try:
        for mode in MODES:
            seq = run_variant(project, mode, 4)
            full = run_variant(project, mode, 1)
            s = seq["sequential"]
            result["modes"][mode] = {
                "judgments_paid": s["judgments_paid"], "judgments_full": full["sequential"]["judgments_paid"],
                "saving": round(1 - s["judgments_paid"] / full["sequential"]["judgments_paid"], 4),
                "rounds_run": s["rounds_run"], "rounds": s["rounds"], "stopped": s["stopped"],
                "passed_sequential": seq["passed"], "passed_full": full["passed"],
                "same_decision": seq["passed"] == full["passed"],
                "reason_sequential": seq["reason"], "reason_full": full["reason"],
                "threshold": seq["threshold"], "margin": seq["margin"]}
            print(f"[bench sequential] {mode}: {json.dumps(result['modes'][mode])}", file=sys.stderr, flush=True)
    finally:
        (project / "params.yaml").write_text(original)
    result |= {"load_avg_start": [round(x, 2) for x in load_start],
               "load_avg_end": [round(x, 2) for x in os.getloadavg()]}
    write_json(args.out, result | {"machine": hardware.describe()})
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
