"""One whole offline cycle from a clean workspace: wall time per stage, vLLM starts, and how close each generating
stage comes to the offline engine doing that stage's own work on this machine.

The project's source (no outputs, no call cache) is copied to a temp folder, made a git + DVC repository, and
the cycle is reproduced by one `dvc repro`, as `llamaduo run` does (`stages`: each stage's wall, s, from DVC's
"Running stage" line to the next; `cycle_wall_s`: all of them); the shared vLLM server lives through the run and
is stopped at the end as `llamaduo run` does (`vllm_starts`, `vllm_start_s`). The shipped params train one uncapped epoch
(`train.max_steps: null`): `train_step_cap` is the cap the cycle trained with (null: none), `params` the rest.

Each generating stage's rate (`stage_rates`), from vLLM's own token counters (the offline engine's metrics for
infer, the server's /metrics for synthesize, baseline and judge) over the stage's generating time (infer: the
engine's generation, metrics/infer.json; a service stage: its wall less the server's start-up when it started it):
- `tokens_per_s`: output tokens per second;
- `computed_tokens_per_s`: tokens the engine ran through the model per second: prefill that the prefix cache did
  not supply, plus output. A judge call reads ~600 prompt tokens to write ~50: its output rate alone says little.

Each stage's own peak (`own_peak`): after the cycle, the stage's own requests are replayed through the offline
engine at its default (best measured) CPU settings, all submitted at once, and timed the same way (generation
time, the engine's start apart in `peak_engine_start_s`). The requests are the stage's, taken by running the
stage's script again in the project copy with its calls answered from the cycle's call cache (so it takes the
same path: the same re-asks, the same judging rounds) and recorded where they leave for the engine:
- a service stage: each call that reached the server (one the cycle's cache did not hold yet), as the server
  received it: the same messages, n, temperature, max_tokens and JSON schema, turned into vLLM sampling
  params by vLLM's own OpenAI request class, with the model's generation defaults as the server applies them;
  replayed on the served model, dtype, max_model_len and seed, with the KV cache the server had (sized for
  `concurrency` requests at once);
- infer: the prompts and sampling params the stage gave the engine, on the same folded model.
The peak engine's prefix cache is emptied before each stage's requests. Per stage: `requests`, `answers`
(their samples), `seconds`, `engine_tokens` (vLLM's counters), `output_tokens` (counted from the answers),
`tokens_per_s`, `computed_tokens_per_s`, and `missing_calls` (calls the cycle's cache lacks: calls that failed in
the cycle, never cached, so not replayed). The answers are sampled again, so their lengths can differ a little
from the stage's: `engine_tokens` of both are in the file. `peak_wall_s`: the whole replay, start-ups included.

`gen_ratio_to_own_peak` and `work_ratio_to_own_peak`: the stage's output and computed rates over its own peak's.
Below 1 is what the stage loses to how it sends the work (concurrency cap, rounds, re-asks, HTTP, process
start-up within its wall); infer's ratio shows the noise of the method (the same engine on the same work).
Server start-ups are reported apart (`vllm_start_s`); the cycle's wall includes them. `load_avg_start` and
`load_avg_end` (os.getloadavg) say how quiet the machine was.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/cycle.py [--override tiny.yaml] [--stages a,b] [--no-peak] [--keep]

Run it with the environment `llamaduo run` gets (no OMP_NUM_THREADS: training uses every core).

Full default cycle (one uncapped epoch, then the peaks): ~30-35 minutes on 2 cores; run it on a quiet machine.
Writes bench/results/cycle.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import re
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


# -- each stage's own requests, recorded by running its script again (cwd: the project copy after its cycle)


# the train stage's own figures (metrics/train.json) the cycle's wall depends on: the epoch's rate and memory
TRAIN_FIGURES = ("rows", "steps", "wall_s", "steady_tokens_per_s", "peak_rss_mb", "rss_mb_first_step", "rss_mb_max_step",
                 "rss_growth_mb", "dtype", "plan", "val_loss")


def train_figures(work: Path) -> dict | None:
    path = work / "metrics" / "train.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    return {k: m.get(k) for k in TRAIN_FIGURES}


def stage_argv(spec: dict, outs_dir: Path) -> list[str]:
    """A stage's command (its dvc.yaml entry) as argv for its script, each declared output moved under `outs_dir`,
    so running it again leaves the cycle's outputs as they are."""
    import shlex

    outs = {next(iter(o)) if isinstance(o, dict) else o for o in spec.get("outs", [])}
    argv = shlex.split(spec["cmd"])
    if argv[0].startswith("python"):
        argv = argv[1:]
    out = []
    for a in argv:
        if a in outs:
            a = str(outs_dir / a)
            Path(a).parent.mkdir(parents=True, exist_ok=True)
        out.append(a)
    return out


def record(stages: list[str], dest: Path) -> None:
    """Write {stage: {"engine": how the stage's engine ran, "requests": [...], "missing": n}} for the generating
    stages in `stages`: a service stage's calls that reached the server (their chat bodies), infer's prompts and
    sampling.

    Each stage's script runs again in this process against an empty call cache shared by the stages in turn (as
    the cycle's cache was empty at its start), its outputs in a temp folder. The local provider's `chat` answers
    from the cycle's cache and records the body; a call the cycle's cache lacks (`missing`) failed in the cycle,
    or the replay went another way: it fails here as a refused call and is not replayed. infer's engine call is
    recorded instead of run."""
    import runpy
    from unittest import mock

    import yaml

    from llamaduo import inference
    from llamaduo.config import load_params
    from llamaduo.providers.cache import CallCache, call_key
    from llamaduo.providers.local import LocalVLLMProvider

    params = load_params("params.yaml")
    specs = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]
    tmp = Path(tempfile.mkdtemp(prefix="llamaduo-replay-"))
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw.setdefault("cache", {})["path"] = str(tmp / "calls.sqlite")
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cycle_cache = CallCache(params.cache.path)
    found: dict[str, dict] = {}
    now: dict = {}

    async def chat(provider, request):
        hit = cycle_cache.get(call_key(provider.identity(), request))
        if hit is None:
            # failed calls are never cached: one the server refused in the cycle (a 400: a prompt over
            # max_model_len) fails here the same way, so the stage goes on as it did; counted in `missing`
            now["missing"] += 1
            raise provider.error("not in the cycle's call cache", status=400)
        srv = provider.params.server
        now["engine"] = {"kind": "server", "model": provider.params.model, "dtype": provider.dtype(),
                         "max_model_len": srv.max_model_len, "seed": srv.seed, "kv_requests": provider.params.concurrency}
        now["requests"].append(provider.body(request))
        return hit

    async def ready(provider):
        return None

    def engine(model_dir, prompts, p, dtype="float32"):
        now["engine"] = {"kind": "offline", "dtype": dtype, "max_model_len": p.max_model_len, "seed": p.seed,
                         "kv_requests": len(prompts)}
        sampling = {"n": p.k, "temperature": p.temperature, "top_p": p.top_p, "max_tokens": p.max_new_tokens}
        now["requests"] += [{"messages": m, "sampling": sampling} for m in prompts]
        blank = {"answer": "", "tokens": 0, "finish_reason": "stop", "latency_s": None}
        return [[dict(blank) for _ in range(p.k)] for _ in prompts], {"load_s": 0.0, "generate_s": 1.0}

    argv0 = sys.argv
    try:
        with (mock.patch.object(LocalVLLMProvider, "chat", chat), mock.patch.object(LocalVLLMProvider, "ensure_ready", ready),
              mock.patch.dict(inference.ENGINES, {"vllm": engine})):
            # a hosted service's calls ran at the vendor, not on this machine; and a replay of them against an empty
            # cache would pay for them again: only the local server's are replayed
            hosted = sorted(n for n, sec in params.providers.items() if sec.kind != "local")
            for stage in stages:
                if stage not in GENERATING or (stage in SERVICE and hosted):
                    if stage in SERVICE and hosted:
                        print(f"[bench cycle] {stage}: not replayed (providers {hosted} are not local)", file=sys.stderr)
                    continue
                now.clear()
                now.update(stage=stage, requests=[], engine=None, missing=0)
                sys.argv = [*stage_argv(specs[stage], tmp / "outs" / stage), "--params", str(tmp / "params.yaml")]
                try:
                    runpy.run_path(sys.argv[0], run_name="__main__")
                except SystemExit as exc:
                    if exc.code:
                        raise RuntimeError(f"replaying {stage} failed (exit {exc.code}): see above") from None
                found[stage] = {"engine": now["engine"], "requests": now["requests"], "missing": now["missing"]}
                print(f"[bench cycle] {stage}: {len(now['requests'])} requests recorded, {now['missing']} not in the "
                      "cycle's cache", file=sys.stderr, flush=True)
    finally:
        sys.argv = argv0
        cycle_cache.close()
        shutil.rmtree(tmp, ignore_errors=True)
    dest.write_text(json.dumps(found))


# -- each stage's own peak: its requests through the offline engine, all at once


def sampling_params(request: dict, defaults: dict):
    """vLLM sampling params of one recorded request. A server call's body goes through vLLM's own OpenAI request
    class with the model's generation defaults, as the server turns it into sampling params (`response_format`
    into structured outputs); infer's are the engine's SamplingParams as the stage builds them."""
    from vllm import SamplingParams

    if "sampling" in request:
        return SamplingParams(**request["sampling"])
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    return ChatCompletionRequest(**request).to_sampling_params(request["max_tokens"], defaults)


def peak_child(spec_path: Path, out_path: Path) -> None:
    """One engine (the model and settings that `spec` names) replays each stage's requests in turn; writes
    {"engine_start_s", "stages": {stage: {requests, seconds, engine_tokens, tokens_per_s, computed_tokens_per_s}}}."""
    from llamaduo import vllm_cpu
    from llamaduo.config import InferParams
    from llamaduo.inference.engines import engine_token_counters, vllm_kwargs

    spec = json.loads(spec_path.read_text())
    eng = spec["engine"]
    # the offline engine's defaults (bench/infer.py measured them best), with what changes the answers from the stage
    p = InferParams().model_copy(update={"max_model_len": eng["max_model_len"], "seed": eng["seed"]})
    os.environ.update(vllm_cpu.env(p))  # read once, by the engine processes started below
    from vllm import LLM

    t0 = time.perf_counter()
    llm = LLM(**vllm_kwargs(spec["model"], p, eng["dtype"], requests=eng["kv_requests"]))
    out = {"engine_start_s": round(time.perf_counter() - t0, 1), "stages": {}}
    defaults = llm.model_config.get_diff_sampling_param()  # what the server applies
    for stage, requests in spec["stages"].items():
        llm.reset_prefix_cache()  # each stage's prefill counted for itself
        params = [sampling_params(r, defaults) for r in requests]
        before = engine_token_counters(llm)
        t1 = time.perf_counter()
        outs = llm.chat([r["messages"] for r in requests], params, use_tqdm=False)
        secs = time.perf_counter() - t1
        after = engine_token_counters(llm)
        tokens = {k: after[k] - before[k] for k in after}
        out["stages"][stage] = {
            "requests": len(requests), "answers": sum(len(o.outputs) for o in outs), "seconds": round(secs, 2),
            "output_tokens": sum(len(c.token_ids) for o in outs for c in o.outputs), "engine_tokens": tokens,
            "tokens_per_s": round(tokens["generation"] / secs, 2), "computed_tokens_per_s": round(tokens["computed"] / secs, 2)}
        print(f"[bench cycle] {stage} own peak: {out['stages'][stage]}", file=sys.stderr, flush=True)
    out_path.write_text(json.dumps(out))


def own_peaks(work: Path, stages: list[str], env: dict) -> tuple[dict, dict]:
    """Each generating stage's own peak ({stage: figures}) and each peak engine's start-up ({model: seconds}).
    Stages that ran on the same model and settings share one engine (one start-up)."""
    tmp = Path(tempfile.mkdtemp(prefix="llamaduo-peak-"))
    try:
        subprocess.run([sys.executable, __file__, "--record", str(tmp / "requests.json"), "--stages", ",".join(stages)],
                       cwd=work, env=env, check=True)
        found = json.loads((tmp / "requests.json").read_text())
        groups: dict[str, dict] = {}
        for stage, f in found.items():
            if not f["requests"]:
                continue  # nothing reached an engine (synthesize at volume 0, a fully cached stage)
            key = json.dumps(f["engine"], sort_keys=True)
            groups.setdefault(key, {"engine": f["engine"], "stages": {}})["stages"][stage] = f["requests"]
        peaks, starts_s = {}, {}
        for i, group in enumerate(groups.values()):
            spec, out = tmp / f"spec{i}.json", tmp / f"peak{i}.json"
            with model_for(work, group["engine"]) as model:
                spec.write_text(json.dumps(group | {"model": model}))
                subprocess.run([sys.executable, __file__, "--peak-child", str(spec), "--out", str(out)], cwd=work,
                               env=env, check=True)
            res = json.loads(out.read_text())
            name = "infer" if group["engine"]["kind"] == "offline" else group["engine"]["model"]
            starts_s[name] = res["engine_start_s"]
            peaks.update({s: r | {"missing_calls": found[s]["missing"]} for s, r in res["stages"].items()})
        return peaks, starts_s
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def model_for(work: Path, engine: dict):
    """The model folder a peak engine loads: the served model; for infer, what infer generated with (the merge
    stage's model when it made one, else base + adapter folded, as `inference.generate` does)."""
    from contextlib import nullcontext

    if engine["kind"] == "server":
        return nullcontext(str(work / engine["model"]))
    merged = work / "models" / "merged"
    if (merged / "config.json").is_file():
        return nullcontext(str(merged))
    from llamaduo.weights import folded

    return folded(work / "models" / "base", work / "models" / "adapter")


def ratios(rates: dict, peaks: dict) -> dict:
    """{gen_ratio_to_own_peak, work_ratio_to_own_peak}: per stage, its rate over its own peak's (None where either
    is missing or zero)."""
    out = {}
    for key, rate in (("gen_ratio_to_own_peak", "tokens_per_s"), ("work_ratio_to_own_peak", "computed_tokens_per_s")):
        out[key] = {s: round(r[rate] / peaks[s][rate], 3) if r.get(rate) and peaks.get(s, {}).get(rate) else None
                    for s, r in rates.items()}
    return out


def main() -> None:
    from llamaduo import hardware
    from llamaduo.atomic import write_json
    from llamaduo.providers.local import starts, stop_all

    ap = argparse.ArgumentParser()
    ap.add_argument("--override", help="YAML merged over params.yaml (e.g. a tiny config to check the bench)")
    ap.add_argument("--stages", help="comma-separated stages to run, in order (default: every stage of dvc.yaml)")
    ap.add_argument("--no-peak", action="store_true", help="skip the stages' own peaks (the replay through the offline engine)")
    ap.add_argument("--keep", action="store_true", help="keep the workspace (its path is printed)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/cycle.json"))
    ap.add_argument("--record", help=argparse.SUPPRESS)
    ap.add_argument("--peak-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.record:
        return record(args.stages.split(","), Path(args.record))
    if args.peak_child:
        return peak_child(Path(args.peak_child), Path(args.out))

    import yaml

    load_start = os.getloadavg()
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
            # one `dvc repro`, as `llamaduo run` does (one DVC run: the shared server lives through every service
            # stage); a stage's wall runs from DVC's "Running stage" line to the next one (or the end)
            argv = ["dvc", "repro"] if stages == order else ["dvc", "repro", "--single-item", *stages]
            proc = subprocess.Popen(argv, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    bufsize=1)
            current, s0, before, n_starts = None, 0.0, {}, 0

            def close(name: str) -> None:
                walls[name] = round(time.perf_counter() - s0, 1)
                if name in SERVICE:
                    new = starts(servers)[n_starts:]
                    after = server_counters(servers)
                    # a server this stage started counts from zero
                    served[name] = {k: after[k] - (0 if new else before.get(k, 0)) for k in after}
                    startup[name] = sum(x.get("startup_s", 0.0) for x in new)
                print(f"[bench cycle] {name}: {walls[name]} s", file=sys.stderr, flush=True)

            for line in proc.stdout:
                sys.stdout.write(line)
                m = re.match(r"Running stage '([^']+)'", line)
                if m:
                    if current:
                        close(current)
                    current, s0 = m.group(1), time.perf_counter()
                    before, n_starts = server_counters(servers), len(starts(servers))
            if proc.wait():
                sys.exit(f"dvc repro failed ({proc.returncode}) in stage {current}")
            if current:
                close(current)
        finally:
            stop_all(servers)  # as `llamaduo run` does
        cycle_wall = round(time.perf_counter() - t0, 1)
        rates = stage_rates(work, walls, served, startup)
        params = yaml.safe_load((work / "params.yaml").read_text())
        result = {"cycle_wall_s": cycle_wall, "stages": walls, "vllm_starts": len(starts(servers)),
                  "vllm_start_s": [x.get("startup_s") for x in starts(servers)], "stage_rates": rates,
                  "params": {k: params[k] for k in ("data", "train", "infer", "judge")},
                  "train_step_cap": params["train"].get("max_steps"), "train": train_figures(work),
                  "override": yaml.safe_load(Path(args.override).read_text()) if args.override else None}
        if not args.no_peak and rates:
            t1 = time.perf_counter()
            peaks, engine_starts = own_peaks(work, [s for s in stages if s in rates], env)
            result |= {"own_peak": peaks, "peak_engine_start_s": engine_starts, **ratios(rates, peaks),
                       "peak_wall_s": round(time.perf_counter() - t1, 1)}
        result |= {"load_avg_start": [round(x, 2) for x in load_start],
                   "load_avg_end": [round(x, 2) for x in os.getloadavg()]}
        write_json(args.out, result | {"machine": hardware.describe()})
        print(json.dumps(result, indent=1))
    finally:
        if args.keep:
            print(f"workspace kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":  # vLLM's engine starts worker processes that re-import this file
    main()
