"""Inference throughput, one run, same prompts: vLLM's offline engine under its CPU settings (dtype, LD_PRELOAD of
tcmalloc + Intel OpenMP, thread binding, KV-cache size) against vLLM's OpenAI server (what the service stages
use) and, optionally, the transformers fallback.

Each variant runs in a fresh process (the engine reads its environment once, at start-up) and the variants
alternate over `--rounds`, so background load hits all of them alike. Throughput is output tokens over the
generation time alone (all prompts submitted at once, K samples each); start-up is reported apart.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/infer.py --model models/base \
        [--prompts 16 --k 4 --max-new-tokens 64 --rounds 2 --variants offline,offline-nopreload,server]

Variant names: offline | server | transformers (each with the schema's defaults: what a stage gets), with
optional suffixes -nopreload, -bf16, -nobind, -bindauto (vLLM's `auto`), -bindall (llamaduo's `all`), -kv<GiB>,
-share (vLLM's own CPU memory sizing: `gpu_memory_utilization` of the RAM, where the stages size the KV cache from
the model and the batch). Each variant's peak RSS is summed over its process tree (the engine's workers too).
Writes bench/results/infer.json. CPU heavy (each variant starts its own engine): run it on an idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def prompts_from_coverage(n: int) -> list[list[dict]]:
    """The first user turn of the first `n` coverage rows, across the task files in turn (fixed, no split needed)."""
    files = sorted((ROOT / "data/coverage").glob("*.jsonl"))
    rows = [[json.loads(line) for line in f.read_text().splitlines() if line.strip()] for f in files]
    out = []
    for i in range(max(len(r) for r in rows)):
        for r in rows:
            if i < len(r) and len(out) < n:
                out.append([{"role": "user", "content": r[i]["prompt"]}])
    return out


def parse_variant(name: str) -> dict:
    """A variant's settings: the schema's defaults (InferParams: what a stage gets), changed by each option."""
    from llamaduo.config import InferParams

    d = InferParams()
    engine, *opts = name.split("-")
    v = {"engine": engine, "dtype": "float32", "cpu_preload": d.cpu_preload, "cpu_threads_bind": d.cpu_threads_bind,
         "cpu_kvcache_gib": d.cpu_kvcache_gib, "share": False}
    for o in opts:
        if o == "nopreload":
            v["cpu_preload"] = False
        elif o == "bf16":
            v["dtype"] = "bfloat16"
        elif o == "nobind":
            v["cpu_threads_bind"] = "nobind"
        elif o == "bindall":  # every core to the engine's worker (llamaduo's `all`)
            v["cpu_threads_bind"] = "all"
        elif o == "bindauto":  # vLLM's own choice: it keeps a core per rank for its scheduler process
            v["cpu_threads_bind"] = "auto"
        elif o == "share":
            v["share"] = True
        elif o.startswith("kv"):
            v["cpu_kvcache_gib"] = int(o[2:])
        else:
            raise SystemExit(f"unknown variant option {o!r} in {name!r}")
    return v


def run_server(model: str, prompts, infer, v: dict) -> tuple[list[dict], dict]:
    """The service stages' path: the local provider's server, every prompt in flight at once (n=K each)."""
    import openai

    from llamaduo.config import LocalServer, ProviderParams
    from llamaduo.inference.engines import server_token_counters
    from llamaduo.providers.local import LocalVLLMProvider

    server = LocalServer(dtype=v["dtype"], max_model_len=infer.max_model_len, seed=infer.seed,
                         gpu_memory_utilization=infer.gpu_memory_utilization, cpu_preload=v["cpu_preload"],
                         cpu_threads_bind=v["cpu_threads_bind"], cpu_kvcache_gib=v["cpu_kvcache_gib"])
    prov = LocalVLLMProvider("bench", ProviderParams(kind="local", model=model, server=server),
                             state_dir=Path(tempfile.mkdtemp(prefix="llamaduo-bench-")))
    t0 = time.perf_counter()
    prov.start()
    t1 = time.perf_counter()

    async def go():
        client = openai.AsyncOpenAI(base_url=prov.base_url, api_key="unused", max_retries=0, timeout=3600)
        resps = await asyncio.gather(*(client.chat.completions.create(
            model="service", messages=m, n=infer.k, temperature=infer.temperature, top_p=infer.top_p,
            max_tokens=infer.max_new_tokens) for m in prompts))
        await client.close()
        return resps

    try:
        resps = asyncio.run(go())
        t2 = time.perf_counter()
        counters = server_token_counters(prov.base_url.removesuffix("/v1"))
    finally:
        with prov._state.locked():
            prov._state.stop()
    rows = [{"tokens": r.usage.completion_tokens / len(r.choices), "latency_s": None, "finish_reason": c.finish_reason}
            for r in resps for c in r.choices]
    return rows, {"load_s": t1 - t0, "generate_s": t2 - t1, "engine_tokens": counters}


def run_measured(cmd: list[str]) -> tuple[int, int]:
    """Run a variant's process; return its exit code and the peak RSS of its process tree (sampled every 0.2 s)."""
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak, root = 0, psutil.Process(proc.pid)
    while proc.poll() is None:
        total = 0
        for p in [root, *root.children(recursive=True)] if proc.poll() is None else []:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        peak = max(peak, total)
        time.sleep(0.2)
    return proc.returncode, peak


def child(args) -> None:
    from llamaduo.config import InferParams
    from llamaduo.inference import ENGINES, run_stats

    v = parse_variant(args.child)
    if v["share"]:  # the baseline: vLLM sizes its memory itself, as before the stages sized the KV cache
        from llamaduo import vllm_cpu

        vllm_cpu.memory_args = lambda *a, **k: {}
    # the schema's defaults (sampling, seed, memory share), not params.yaml: a bench independent of a run's edits
    p = InferParams().model_copy(update={
        "k": args.k, "max_new_tokens": args.max_new_tokens, "cpu_preload": v["cpu_preload"],
        "cpu_threads_bind": v["cpu_threads_bind"], "cpu_kvcache_gib": v["cpu_kvcache_gib"]})
    prompts = prompts_from_coverage(args.prompts)
    if v["engine"] == "server":
        rows, timing = run_server(args.model, prompts, p, v)
    else:
        answers, timing = ENGINES["vllm" if v["engine"] == "offline" else v["engine"]](args.model, prompts, p, dtype=v["dtype"])
        rows = [a for group in answers for a in group]
    stats = run_stats(rows, engine=args.child, prompts=len(prompts), wall_s=timing["load_s"] + timing["generate_s"], **timing)
    Path(args.out).write_text(json.dumps(stats | {"variant": v}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "models/base"), help="a full model folder (e.g. models/base or models/merged)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--variants", default="offline,offline-nopreload,server")
    ap.add_argument("--results", default=str(ROOT / "bench/results/infer.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"{args.model}: not a model folder (run `dvc repro base_model` first, or pass --model)")

    from llamaduo import hardware, vllm_cpu
    from llamaduo.atomic import write_json

    variants = args.variants.split(",")
    for v in variants:
        parse_variant(v)  # fail on a typo before the first minute-long start
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    load_before = os.getloadavg()  # the variants alternate, so other load hits each alike; the file says how much
    for r in range(args.rounds):
        for v in variants:
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                cmd = [sys.executable, __file__, "--child", v, "--out", out.name, "--model", args.model,
                       "--prompts", str(args.prompts), "--k", str(args.k), "--max-new-tokens", str(args.max_new_tokens)]
                rc, peak = run_measured(cmd)
                if rc != 0:
                    sys.exit(f"variant {v} failed (exit {rc}): rerun `{' '.join(cmd)}` to see why")
                stats = json.loads(Path(out.name).read_text()) | {"peak_rss_gib": round(peak / 2**30, 2)}
            runs[v].append(stats)
            print(f"round {r} {v}: {stats['tokens_per_s']} tokens/s (load {stats['load_s']} s, "
                  f"peak RSS {stats['peak_rss_gib']} GiB)", file=sys.stderr, flush=True)
    summary = {v: {"tokens_per_s": [s["tokens_per_s"] for s in rs], "load_s": [s["load_s"] for s in rs],
                   "mean_tokens_per_s": round(sum(s["tokens_per_s"] for s in rs) / len(rs), 2),
                   "mean_computed_tokens_per_s": round(sum(s.get("computed_tokens_per_s", 0) for s in rs) / len(rs), 2),
                   "peak_rss_gib": max(s["peak_rss_gib"] for s in rs)}
               for v, rs in runs.items()}
    ref = summary[variants[0]]["mean_tokens_per_s"]
    for v in variants:
        summary[v]["ratio_to_" + variants[0]] = round(summary[v]["mean_tokens_per_s"] / ref, 3) if ref else None
    out = {"prompts": args.prompts, "k": args.k, "max_new_tokens": args.max_new_tokens, "rounds": args.rounds,
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "preload_libs": {"tcmalloc": vllm_cpu.tcmalloc(), "iomp": vllm_cpu.iomp()},
           "summary": summary, "runs": runs, "machine": hardware.describe(),
           "load_avg_before": [round(x, 2) for x in load_before], "load_avg_after": [round(x, 2) for x in os.getloadavg()]}
    write_json(args.results, out)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":  # vLLM's engine starts worker processes that re-import this file
    main()
