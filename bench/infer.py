"""Inference throughput: vLLM's offline engine against the transformers fallback, same prompts, one run.

Both engines get the same merged model (models/base + models/adapter, merged once), the same test prompts
through the chat template and the same sampling parameters (K samples per prompt). Throughput is output
tokens over the generation time alone; engine start-up is reported apart (it does not grow with the test set).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/infer.py [--prompts 24 --k 4 --max-new-tokens 128]

CPU heavy (~4 min here, vLLM starts in ~55 s): run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    from llamaduo import hardware, tables
    from llamaduo.atomic import write_json
    from llamaduo.config import load_params
    from llamaduo.inference import ENGINES, run_stats
    from llamaduo.weights import folded

    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--base", default=str(ROOT / "models/base"))
    ap.add_argument("--adapter", default=str(ROOT / "models/adapter"))
    ap.add_argument("--test", default=str(ROOT / "data/prepared/test.parquet"))
    args = ap.parse_args()
    for path in (args.base, args.adapter, args.test):
        if not Path(path).exists():
            sys.exit(f"{path} not found: run the pipeline up to `train` first (dvc repro train)")

    test = tables.read(args.test, "split")[: args.prompts]
    prompts = [[{"role": "user", "content": r["instruction"]}] for r in test]
    p = load_params(ROOT / "params.yaml").infer.model_copy(update={"k": args.k, "max_new_tokens": args.max_new_tokens})
    out = {"prompts": len(prompts), "k": p.k, "max_new_tokens": p.max_new_tokens, "temperature": p.temperature,
           "threads": os.environ.get("OMP_NUM_THREADS")}
    with folded(args.base, args.adapter) as model_dir:
        for engine in ("transformers", "vllm"):  # transformers first: vLLM's workers keep their memory until exit
            answers, timing = ENGINES[engine](model_dir, prompts, p)
            rows = [a for group in answers for a in group]
            stats = run_stats(rows, engine=engine, prompts=len(prompts), wall_s=timing["load_s"] + timing["generate_s"], **timing)
            out[engine] = stats
            print(engine, json.dumps(stats), flush=True)
    out["vllm_over_transformers"] = round(out["vllm"]["tokens_per_s"] / out["transformers"]["tokens_per_s"], 3)
    write_json(ROOT / "bench/results/infer.json", out | {"machine": hardware.describe()})
    print(json.dumps(out, indent=2))


if __name__ == "__main__":  # vLLM's engine starts worker processes that re-import this file
    main()
