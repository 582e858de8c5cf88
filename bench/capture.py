"""`llamaduo capture` from a local MLflow store at 10k and 40k traces, against reading the same traces with
`mlflow.search_traces` alone, in the same run.

The store is a sqlite tracking store (`sqlite:///...`, spans in the store as MLflow 3 keeps them). Its traces are
chat spans as `mlflow.openai.autolog()` records them (OpenAI-format `messages` in, a chat completion out), written in
batches through the store's own `log_spans` (one trace through the tracing API takes ~100 ms here, so 50k would take
the bench's whole budget); prompts are seeded random word sequences (so near-duplicate search has real work) and one
in twenty holds an e-mail address (so redaction has some). The store holds no ratings: one `log_feedback` is a
write of ~25 ms here, and checking a rating is a dict lookup per trace, so `capture.mlflow.rating_name` is null; the
task comes from the system prompt (`capture.tasks_by_system`).

Each measurement runs in a fresh process, so its peak RSS (ru_maxrss) is its own:
- `search_traces`: `mlflow.search_traces(experiment_ids=[...], return_type="list")`, every trace in memory;
- `capture`: `llamaduo.capture.capture` as `llamaduo capture` runs it (pages of `page_size`, selection, redaction,
  curation's duplicate checks, the atomic write) into an empty coverage folder;
- `capture_no_hygiene`: the same with `pii: keep` and `dedup: false` (reading, selection and writing only).

    .venv/bin/python bench/capture.py [--sizes 10000 40000] [--out bench/results/capture.json]

Prints the figures, writes the JSON with the machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SYSTEM = "You summarize support tickets in one sentence."
WORDS = ("invoice refund login password shipping parcel export column search order account billing charge "
         "mobile app crash screen update payment card delay customer support answer week month error page "
         "report dashboard team email address phone setting profile upload download file size limit").split()


def _span(i: int, rng: random.Random, t0_ns: int):
    from mlflow.entities import Span

    tid, sid = os.urandom(16), os.urandom(8)
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
    prompt = f"Ticket {i}: {words}." + (f" Write to user{i}@example.com." if i % 20 == 0 else "")
    answer = "The customer reports " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))) + "."
    start = t0_ns + i * 1_000_000
    inputs = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]}
    outputs = {"id": f"c{i}", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
               "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
               "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}}
    return Span.from_dict({
        "trace_id": base64.b64encode(tid).decode(), "span_id": base64.b64encode(sid).decode(), "parent_span_id": None,
        "name": "Completions", "start_time_unix_nano": start, "end_time_unix_nano": start + 500_000, "events": [],
        "status": {"code": "STATUS_CODE_OK", "message": ""}, "links": [],
        "attributes": {"mlflow.traceRequestId": json.dumps("tr-" + tid.hex()), "mlflow.spanType": json.dumps("CHAT_MODEL"),
                       "mlflow.spanInputs": json.dumps(inputs), "mlflow.spanOutputs": json.dumps(outputs),
                       "mlflow.message.format": json.dumps("openai"), "mlflow.llm.model": json.dumps("gpt-4o-mini")}})


def make_store(uri: str, sizes: list[int]) -> dict[int, str]:
    import mlflow
    from mlflow.tracking._tracking_service.utils import _get_store

    mlflow.set_tracking_uri(uri)
    store, out, rng = _get_store(), {}, random.Random(0)
    for n in sizes:
        exp = mlflow.create_experiment(f"traces-{n}")
        t0 = time.time_ns() - n * 1_000_000
        for start in range(0, n, 2000):
            store.log_spans(exp, [_span(i, rng, t0) for i in range(start, min(n, start + 2000))])
        out[n] = exp
    return out


def measure(kind: str, uri: str, exp_id: str, n: int, work: str) -> dict:
    """In this (fresh) process: wall seconds (from after importing mlflow and llamaduo, which both pay), rows, peak RSS.
    capture's own lazy imports (presidio, detect-secrets, curation's compiled kernels) are in its time."""
    import mlflow

    from llamaduo.capture import capture
    from llamaduo.config import Params

    t0 = time.perf_counter()
    if kind == "search_traces":
        mlflow.set_tracking_uri(uri)
        traces = mlflow.search_traces(experiment_ids=[exp_id], return_type="list")
        rows, kept = len(traces), None
    else:
        hygiene = kind == "capture"
        p = Params.model_validate({
            "data": {"coverage_dir": f"{work}/coverage", "tasks": ["summarize"]},
            "capture": {"task_key": None, "tasks_by_system": {"summarize": SYSTEM}, "pii": "redact" if hygiene else "keep",
                        "dedup": hygiene,
                        "mlflow": {"experiment": f"traces-{n}", "tracking_uri": uri, "rating_name": None}}})
        summary = capture(p, summary_out=None)
        rows, kept = summary["sources"]["mlflow"]["read"], summary["sources"]["mlflow"]["kept"]
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 2), "rows": rows, "kept": kept, "rows_per_s": round(rows / wall),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 40000])
    ap.add_argument("--out", default=str(ROOT / "bench/results/capture.json"))
    ap.add_argument("--measure", nargs=5, metavar=("KIND", "URI", "EXP", "N", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false"}
    if args.measure:
        kind, uri, exp, n, work = args.measure
        print(json.dumps(measure(kind, uri, exp, int(n), work)))
        return
    from llamaduo import hardware
    from llamaduo.atomic import write_json

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        t0 = time.perf_counter()
        made = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import capture, json; "
                               f"print(json.dumps(capture.make_store({uri!r}, {args.sizes!r})))"],
                              capture_output=True, text=True, env=env, cwd=tmp, check=True)
        exps = {int(k): v for k, v in json.loads(made.stdout.strip().splitlines()[-1]).items()}
        print(f"store: {sum(args.sizes)} traces written in {time.perf_counter() - t0:.0f} s")
        results = {}
        for n in args.sizes:
            results[str(n)] = {}
            for kind in ("search_traces", "capture_no_hygiene", "capture"):
                work = tempfile.mkdtemp(dir=tmp)
                res = subprocess.run([sys.executable, __file__, "--measure", kind, uri, exps[n], str(n), work],
                                     capture_output=True, text=True, env=env, cwd=work)
                if res.returncode:
                    sys.exit(f"{kind} at {n}: {res.stderr[-3000:]}")
                results[str(n)][kind] = json.loads(res.stdout.strip().splitlines()[-1])
                print(f"{n:>6} {kind:<20} {results[str(n)][kind]}")
            r = results[str(n)]
            r["capture_over_search_traces"] = round(r["capture"]["wall_s"] / r["search_traces"]["wall_s"], 2)
            r["capture_no_hygiene_over_search_traces"] = round(r["capture_no_hygiene"]["wall_s"] / r["search_traces"]["wall_s"], 2)
    lo, hi = (str(s) for s in (min(args.sizes), max(args.sizes)))
    growth = {k: round(results[hi][k]["peak_rss_mb"] / results[lo][k]["peak_rss_mb"], 2)
              for k in ("search_traces", "capture_no_hygiene", "capture")}
    print(f"peak RSS {hi} / {lo} traces: {growth}")
    write_json(args.out, {"sizes": results, "peak_rss_growth": growth, "load_avg_1m": round(os.getloadavg()[0], 2),
                          "cpus": os.cpu_count(), "machine": hardware.describe()})


if __name__ == "__main__":
    main()
