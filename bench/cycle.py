"""One whole offline cycle from a clean workspace: wall time per stage, vLLM starts, and how close each generating
stage comes to the offline engine's peak throughput on this machine.

The project's source (no outputs, no call cache) is copied to a temp folder, made a git + DVC repository, and
each stage of dvc.yaml is reproduced in order with its own `dvc repro <stage>` (timed); the shared vLLM server
is stopped at the end as `llamaduo run` does. Then the offline engine generates a fixed batch at its default
(best measured) settings on the same base model (bench/infer.py, variant `offline`): the peak.

Two ratios per generating stage, both against that peak and from vLLM's own token counters (the offline engine's
metrics for infer and the peak, the server's /metrics for synthesize, baseline and judge), over the stage's
generating time (infer: the engine's generation; a service stage: its wall less the server's start-up):
- `gen_ratio_to_peak`: output tokens per second;
- `work_ratio_to_peak`: computed tokens per second: prefill that the prefix cache did not supply, plus output.
  A judge call reads ~600 prompt tokens to write ~50, so its output rate alone says little about whether the
  engine was kept busy; the work rate compares like with like.
Server start-ups are reported apart (`vllm_start_s`); the cycle's wall includes them.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/cycle.py [--override tiny.yaml] [--stages a,b]

Run it with the environment `llamaduo run` gets (no OMP_NUM_THREADS: training uses every core).

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
sys.path.insert(0, str(ROOT / "support"))  # the project copy, shared with the tests

from workspace import copy_project  # noqa: E402

# generating stage -> its metrics file
GENERATING = {"synthesize": "synthesize.json", "infer": "infer.json", "baseline": "baseline.json", "judge": "eval.json"}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


SERVICE = ("synthesize", "baseline", "judge")  # the stages that use the shared vLLM server


def server_counters(state_dir: Path) -> dict[str, int]:
    """vLLM's token counters (`engines.token_counters`) of the shared server(s) running now; zeros when none."""
    from llamaduo.inference.engines import TOKEN_COUNTERS, server_token_counters

    total = dict.fromkeys([*TOKEN_COUNTERS, "computed"], 0)
    for path in sorted(state_dir.glob("*.json")) if state_dir.is_dir() else []:
        st = json.loads(path.read_text())
        for k, v in server_token_counters(f"http://{st['host']}:{st['port']}").items():
            total[k] += v
    return total


def stage_rates(work: Path, walls: dict, served: dict, startup: dict) -> dict:
    """Per generating stage: output tokens/s and computed tokens/s (prefill not served by vLLM's prefix cache,
    plus generation) over its generating time. infer: the offline engine's generation time (metrics/infer.json);
    a service stage: its wall less the server's start-up if it started the server, from the server's own
    counters (calls answered by the call cache cost the engine nothing and count nothing)."""
    rates = {}
    if "infer" in walls and (work / "metrics/infer.json").exists():
        m = json.loads((work / "metrics/infer.json").read_text())
        rates["infer"] = {"tokens_per_s": m.get("tokens_per_s"), "computed_tokens_per_s": m.get("computed_tokens_per_s"),
                          "seconds": m.get("generate_s"), "engine_tokens": m.get("engine_tokens")}
    for stage in SERVICE:
        if stage not in walls:
            continue
        c, secs = served.get(stage, {}), walls[stage] - startup.get(stage, 0.0)
        busy = c.get("generation", 0) > 0 and secs > 0
        rates[stage] = {"tokens_per_s": round(c["generation"] / secs, 2) if busy else None,
                        "computed_tokens_per_s": round(c["computed"] / secs, 2) if busy else None,
                        "seconds": round(secs, 1), "engine_tokens": c or None}
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
        served: dict[str, dict] = {}  # service stage -> the server's token counters, what that stage added
        startup: dict[str, float] = {}  # service stage -> seconds it waited for a server it started
        servers = work / ".llamaduo" / "servers"
        env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
        t0 = time.perf_counter()
        try:
            for s in stages:
                before, n_starts = server_counters(servers), len(starts(servers))
                s0 = time.perf_counter()
                subprocess.run(["dvc", "repro", "--single-item", s], cwd=work, check=True, env=env)
                walls[s] = round(time.perf_counter() - s0, 1)
                if s in SERVICE:
                    new = starts(servers)[n_starts:]
                    after = server_counters(servers)
                    # a server this stage started counts from zero
                    served[s] = {k: after[k] - (0 if new else before[k]) for k in after}
                    startup[s] = sum(x.get("startup_s", 0.0) for x in new)
                print(f"[bench cycle] {s}: {walls[s]} s", file=sys.stderr, flush=True)
        finally:
            stop_all(servers)  # as `llamaduo run` does
        cycle_wall = round(time.perf_counter() - t0, 1)
        rates = stage_rates(work, walls, served, startup)
        result = {"cycle_wall_s": cycle_wall, "stages": walls, "vllm_starts": len(starts(servers)),
                  "vllm_start_s": [x.get("startup_s") for x in starts(servers)], "stage_rates": rates,
                  "params": {k: yaml.safe_load((work / "params.yaml").read_text())[k] for k in ("data", "train", "infer", "judge")},
                  "override": yaml.safe_load(Path(args.override).read_text()) if args.override else None}
        if not args.no_peak and (work / "models" / "base" / "config.json").is_file():
            pk = peak(work, args.peak_prompts, args.peak_k, args.peak_max_new_tokens)
            result["peak"] = {"tokens_per_s": pk["mean_tokens_per_s"], "computed_tokens_per_s": pk["mean_computed_tokens_per_s"],
                              "prompts": args.peak_prompts, "k": args.peak_k, "max_new_tokens": args.peak_max_new_tokens}
            for key, rate in (("gen_ratio_to_peak", "tokens_per_s"), ("work_ratio_to_peak", "computed_tokens_per_s")):
                result[key] = {s: round(r[rate] / result["peak"][rate], 3) if r[rate] and result["peak"][rate] else None
                               for s, r in rates.items()}
        write_json(args.out, result | {"machine": hardware.describe()})
        print(json.dumps(result, indent=1))
    finally:
        if args.keep:
            print(f"workspace kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
