"""One whole offline cycle from a clean workspace: wall time per stage, vLLM starts, and how close each generating
stage comes to the offline engine's peak throughput on this machine.

The project's source (no outputs, no call cache) is copied to a temp folder, made a git + DVC repository, and
each stage of dvc.yaml is reproduced in order with its own `dvc repro <stage>` (timed); the shared vLLM server
is stopped at the end as `llamaduo run` does. Then the offline engine generates a fixed batch at its default
(best measured) settings on the same base model (bench/infer.py, variant `offline`): the peak.
`gen_ratio_to_peak` per generating stage is its output tokens per second against that peak: infer from its
generation time (metrics/infer.json), the service stages (synthesize, baseline, judge) from their output
tokens over the stage's wall time, server start-up included (what a cycle pays).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/cycle.py [--override tiny.yaml] [--stages a,b]

Full default cycle: 15+ minutes here; run it on a quiet machine. Writes bench/results/cycle.json (or --out).
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

# pipeline outputs and local state: a clean workspace makes its own
SKIP = ("models/", "data/prepared/", "data/synthetic/", "data/eval/", "metrics/", "data/services.json", ".llamaduo/",
        "bench/results/", "mlruns/")
# generating stage -> its metrics file
GENERATING = {"synthesize": "synthesize.json", "infer": "infer.json", "baseline": "baseline.json", "judge": "eval.json"}


def copy_project(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        if f.startswith(SKIP) and not f.endswith(".gitignore"):
            continue
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    (dest / "metrics").mkdir(exist_ok=True)
    (dest / "metrics" / "champion.json").write_text("{}\n")  # no champion yet (written by the loop)


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def output_tokens(usage: dict) -> int:
    """Output tokens in a stage's `usage` entry (flat, per provider, or with a `total`)."""
    if "calls" in usage:
        return usage.get("output_tokens", 0)
    if "total" in usage:
        return output_tokens(usage["total"])
    return sum(output_tokens(v) for v in usage.values() if isinstance(v, dict))


def stage_rates(work: Path, walls: dict) -> dict:
    rates = {}
    for stage, file in GENERATING.items():
        path = work / "metrics" / file
        if stage not in walls or not path.exists():
            continue
        m = json.loads(path.read_text())
        if stage == "infer":
            rates[stage] = m.get("tokens_per_s")
        else:
            tokens = output_tokens(m.get("usage", {}))
            rates[stage] = round(tokens / walls[stage], 2) if walls[stage] and tokens else None
    return rates


def peak(work: Path, prompts: int, k: int, max_new_tokens: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, str(ROOT / "bench" / "infer.py"), "--model", str(work / "models" / "base"),
                        "--variants", "offline", "--prompts", str(prompts), "--k", str(k),
                        "--max-new-tokens", str(max_new_tokens), "--results", out.name], check=True)
        return json.loads(Path(out.name).read_text())["summary"]["offline"]


def main() -> None:
    from llamaduo import hardware
    from llamaduo.atomic import write_json
    from llamaduo.providers.local import starts, stop_all

    ap = argparse.ArgumentParser()
    ap.add_argument("--override", help="YAML merged over params.yaml (e.g. a tiny config to check the bench)")
    ap.add_argument("--stages", help="comma-separated stages to run, in order (default: every stage of dvc.yaml)")
    ap.add_argument("--no-peak", action="store_true", help="skip the offline engine's peak run")
    ap.add_argument("--peak-prompts", type=int, default=16)
    ap.add_argument("--peak-k", type=int, default=4)
    ap.add_argument("--peak-max-new-tokens", type=int, default=64)
    ap.add_argument("--keep", action="store_true", help="keep the workspace (its path is printed)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/cycle.json"))
    args = ap.parse_args()

    import yaml

    work = Path(tempfile.mkdtemp(prefix="llamaduo-cycle-"))
    try:
        copy_project(work)
        if args.override:
            params = merge(yaml.safe_load((work / "params.yaml").read_text()), yaml.safe_load(Path(args.override).read_text()))
            (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        subprocess.run(["git", "init", "-q"], cwd=work, check=True)
        if not (work / ".dvc").is_dir():  # the project's .dvc/config comes with the copy
            subprocess.run(["dvc", "init", "-q"], cwd=work, check=True)
        order = list(yaml.safe_load((work / "dvc.yaml").read_text())["stages"])  # written in dependency order
        stages = args.stages.split(",") if args.stages else order
        unknown = [s for s in stages if s not in order]
        if unknown:
            sys.exit(f"unknown stages {unknown}; dvc.yaml has {order}")
        walls: dict[str, float] = {}
        env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
        t0 = time.perf_counter()
        try:
            for s in stages:
                s0 = time.perf_counter()
                subprocess.run(["dvc", "repro", "--single-item", s], cwd=work, check=True, env=env)
                walls[s] = round(time.perf_counter() - s0, 1)
                print(f"[bench cycle] {s}: {walls[s]} s", file=sys.stderr, flush=True)
        finally:
            stop_all(work / ".llamaduo" / "servers")  # as `llamaduo run` does
        cycle_wall = round(time.perf_counter() - t0, 1)
        rates = stage_rates(work, walls)
        result = {"cycle_wall_s": cycle_wall, "stages": walls, "vllm_starts": len(starts(work / ".llamaduo" / "servers")),
                  "stage_tokens_per_s": rates, "override": yaml.safe_load(Path(args.override).read_text()) if args.override else None}
        if not args.no_peak and (work / "models" / "base" / "config.json").is_file():
            pk = peak(work, args.peak_prompts, args.peak_k, args.peak_max_new_tokens)
            result["peak_tokens_per_s"] = pk["mean_tokens_per_s"]
            result["gen_ratio_to_peak"] = {s: round(r / pk["mean_tokens_per_s"], 3) if r else None for s, r in rates.items()}
        write_json(args.out, result | {"machine": hardware.describe()})
        print(json.dumps(result, indent=1))
    finally:
        if args.keep:
            print(f"workspace kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
