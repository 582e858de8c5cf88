"""Faults at volume: the provider layer (call engine, Batch API driver, the call cache) against loopback gateways
that speak the three vendors' wire formats (OpenAI Chat Completions, Anthropic Messages, Gemini generateContent,
and each one's Batch API) and inject faults at a set rate: 429 with and without Retry-After, 500, 503, connection
resets, timeouts (the answer comes after the client gave up), bodies cut off half-way and slow first bytes.

Several worker processes share one call cache, each wanting its own shard of the requests and its neighbour's, so
every request is wanted by two processes at once (claims, waits and batch jobs polled by both). The gateway bills
a generation attempt when it has written the complete answer, and every item of every batch job it created (a
vendor runs a job whether or not its results are fetched). Every answer is marked with the attempt that produced
it, so the stored answers say which billed attempt each request received. Reported:

- requests answered, and rows lost (wanted by a worker and not answered: must be 0);
- answers received complete and then paid again (a billed attempt for a request that started after its
  answer was stored: must be 0);
- billed attempts whose answer no client received (count and cost): an answer written whole after its client gave
  up. On loopback the client's closed socket fails the late write at once, so it is rarely billed here;
- the cost accounting: what the cache records as paid, against the gateway's own count of billed attempts
  received (calls, tokens and USD must match exactly);
- p50 and p99 added latency per request: the faulted run against a baseline run of the same load without
  faults, in the same invocation; peak RSS of the workers and the gateways.

The fault injection is the loopback fakes' own (support/fakes/server.py: `fault_rate`, `rate_faults`): Toxiproxy,
the usual tool for TCP faults, ships no server in PyPI, Debian or npm (only clients), and HTTP status faults in
each vendor's error shape need the vendor fakes anyway.

    .venv/bin/python bench/faults.py [--online 3000] [--batch 600] [--workers 8] [--fault-rate 0.1]

(--online and --batch are per vendor.) Prints the figures, writes bench/results/faults.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENDORS = ("openai", "anthropic", "gemini")
KEY_ENVS = {"OPENAI_API_KEY": "bench", "ANTHROPIC_API_KEY": "bench", "GEMINI_API_KEY": "bench"}
PRICE = {"input_per_mtok": 2.5, "output_per_mtok": 10.0, "batch_factor": 0.5}
MARK = re.compile(r"\|((?:openai|anthropic|gemini)-\d+)")  # the attempt an answer came from (serve.py --marked)


def fault_mix(timeout_s: float) -> list:
    """The faults drawn, each as likely as the others (support/fakes/server.py spells them)."""
    return [
        ["status", 429, {"Retry-After": "1", "retry-after-ms": "200"}],  # with Retry-After (OpenAI sends both)
        ["status", 429],                                                  # without
        ["status", 500],
        ["status", 503],
        ["reset"],                                                        # TCP RST, no answer
        ["sleep", timeout_s + 0.5],                                       # a timeout: the answer is written too late
        ["cut"],                                                          # the body breaks off half-way
        ["sleep", timeout_s / 4],                                         # a slow first byte, inside the timeout
    ]


def provider_params(kind: str, base_url: str, a, *, batch: bool) -> dict:
    return {"kind": kind, "model": "bench-model", "base_url": base_url, "concurrency": a.concurrency,
            "timeout_s": a.timeout, "max_retries": 8, "retry_base_s": 0.05, "retry_max_s": 1.0, "retry_after_max_s": 1.0,
            "price": PRICE, "batch": batch, "batch_poll_s": 0.2, "batch_max_requests": 50, "batch_wait_s": 600}


def shard(n: int, workers: int, w: int) -> list[int]:
    """Indices of worker `w`'s requests: its shard and the next worker's (each index is wanted by two workers)."""
    return [i for i in range(n) if i % workers in (w, (w + 1) % workers)]


# -- a worker: one process of the pipeline, sharing the cache with the others


def timed(chat, first: dict, done: dict):
    """`chat` noting, per request, when its first attempt began and when an answer came: the request's latency
    with every retry and backoff in it (a request another worker paid for is not timed here)."""

    async def call(req):
        prompt = req.messages[-1][1]
        first.setdefault(prompt, time.monotonic())
        res = await chat(req)
        done[prompt] = time.monotonic()
        return res

    return call


def worker(cfg: dict, w: int) -> dict:
    from llamaduo.config import ProviderParams
    from llamaduo.errors import ProviderError
    from llamaduo.providers import ChatRequest, get_provider
    from llamaduo.providers.cache import CallCache
    from llamaduo.providers.engine import run_calls
    from llamaduo.usage import Usage

    a = argparse.Namespace(**cfg["args"])
    texts, latencies, errors, reruns, usage = {}, [], [], 0, Usage()
    for kind in VENDORS:
        for mode, n in (("online", a.online), ("batch", a.batch)):
            prompts = [f"{kind}-{mode}-{i}" for i in shard(n, a.workers, w)]
            reqs = [ChatRequest(messages=(("user", p),), temperature=0.7, max_tokens=16) for p in prompts]
            params = ProviderParams.model_validate(provider_params(kind, cfg["urls"][kind], a, batch=mode == "batch"))
            first, done = {}, {}
            for attempt in range(3):  # a failed run is rerun, as a user reruns a failed stage
                provider = get_provider(kind, params)
                provider.chat = timed(provider.chat, first, done)
                cache = CallCache(cfg["cache"])
                try:
                    results, u = run_calls(provider, reqs, cache=cache, desc=f"{kind} {mode}", progress=False)
                except ProviderError as exc:
                    errors.append(f"{kind} {mode} run {attempt}: {exc}"[:500])
                    reruns += 1
                    continue
                finally:
                    cache.close()
                usage.add(u)
                texts |= {p: r.choices[0].text for p, r in zip(prompts, results)}
                break
            latencies += [done[p] - first[p] for p in done]
    return {"worker": w, "texts": texts, "latencies": latencies, "errors": errors, "reruns": reruns,
            "usage": usage.as_dict(), "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# -- the parent: gateways, workers, and the books


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def _hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_phase(a, fault_rate: float, tmp: Path) -> dict:
    env = dict(os.environ, **KEY_ENVS, PYTHONPATH=os.pathsep.join([str(ROOT / "support"), str(ROOT / "src"),
                                                                    os.environ.get("PYTHONPATH", "")]))
    gateways, urls = {}, {}
    for k, kind in enumerate(VENDORS):
        cmd = [sys.executable, str(ROOT / "support/fakes/serve.py"), kind, "--marked", "--batch-polls", "2",
               "--fault-rate", str(fault_rate), "--rate-faults", json.dumps(fault_mix(a.timeout)), "--seed", str(a.seed + k)]
        gateways[kind] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        urls[kind] = gateways[kind].stdout.readline().strip()
    cache = tmp / "calls.sqlite"
    cfg = tmp / "worker.json"
    cfg.write_text(json.dumps({"args": vars(a), "urls": urls, "cache": str(cache)}))
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(w), "--config", str(cfg)], env=env,
                              stdout=subprocess.PIPE, text=True) for w in range(a.workers)]
    outs = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"worker exited with {p.returncode}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.monotonic() - start
    roots = {kind: re.match(r"http://[^/]+", url).group(0) for kind, url in urls.items()}
    ledgers = {kind: _get(f"{roots[kind]}/_fake/ledger") for kind in VENDORS}
    injected = {kind: _get(f"{roots[kind]}/_fake/stats")["injected"] for kind in VENDORS}
    gateway_mib = max(_hwm_mib(p.pid) for p in gateways.values())
    for p in gateways.values():
        p.stdin.close()
        p.wait(timeout=30)
    return books(a, outs, ledgers, cache) | {
        "fault_rate": fault_rate, "wall_s": round(wall, 1), "injected": injected,
        "peak_rss_mib": {"worker_max": round(max(o["maxrss_mib"] for o in outs), 1), "gateway_max": round(gateway_mib, 1)},
    }


def books(a, outs: list[dict], ledgers: dict, cache: Path) -> dict:
    """Every billed attempt against what the cache stored and what the workers got back."""
    from llamaduo.config import PriceParams
    from llamaduo.usage import Usage, call_cost

    price = PriceParams(**PRICE)

    def cost(tokens, batch: bool) -> float:
        return call_cost(price, argparse.Namespace(input_tokens=tokens[0], output_tokens=tokens[1]), batch=batch)

    # what the clients hold: one cache row per paid answer (the project's own record of what was paid)
    db = sqlite3.connect(cache)
    stored = {}
    for result, created, cost_usd, inp, out in db.execute("SELECT result, created, cost_usd, input_tokens, output_tokens FROM calls"):
        text = json.loads(result)["choices"][0]["text"]
        prompt, mark = text.rsplit("|", 1)
        stored[prompt] = {"mark": mark, "created": created, "cost": cost_usd, "tokens": (inp, out)}
    db.close()

    # what the gateways billed: (prompt, mark, when the attempt started, tokens, batch)
    billed = []
    for led in ledgers.values():
        billed += [(b["prompt"], MARK.search(b["text"]).group(1), b["arrived"], b["tokens"], False) for b in led["online"]]
        billed += [(it["prompt"], MARK.search(it["text"]).group(1), job["created"], it["tokens"], True)
                   for job in led["batches"] for it in job["items"]]
    received, again, lost_answers = [], [], []
    for prompt, mark, started, tokens, batch in billed:
        got = stored.get(prompt)
        if got is not None and got["mark"] == mark:
            received.append((tokens, batch))
        elif got is not None and started > got["created"]:
            again.append((tokens, batch))  # paid for again after the answer was stored
        else:
            lost_answers.append((tokens, batch))
    billed_marks = {(p, m) for p, m, *_ in billed}
    unbilled = [p for p, s in stored.items() if (p, s["mark"]) not in billed_marks]

    wanted = {f"{kind}-{mode}-{i}" for kind in VENDORS for mode, n in (("online", a.online), ("batch", a.batch)) for i in range(n)}
    rows_lost = sum(1 for o in outs for p in _wanted(a, o["worker"]) if not o["texts"].get(p))
    disagree = sum(1 for p in wanted if len({o["texts"][p] for o in outs if p in o["texts"]}) > 1)
    usage = Usage()
    for o in outs:
        usage.add(Usage(**o["usage"]))
    lat = [x for o in outs for x in o["latencies"]]

    def usd(items) -> float:
        return sum(cost(t, b) for t, b in items)

    client_usd = sum(s["cost"] for s in stored.values())
    gateway_usd = usd(received) + usd(again) + usd(lost_answers)
    return {
        "requests": len(wanted),
        "requests_answered": sum(1 for p in wanted if p in stored),
        "rows_lost": rows_lost,
        "answers_differing_between_workers": disagree,
        "paid_again_after_received": {"count": len(again), "usd": round(usd(again), 9)},
        "billed_not_received": {"count": len(lost_answers), "usd": round(usd(lost_answers), 9)},
        "stored_answers_never_billed": len(unbilled),
        "accounting": {
            "gateway_billed_attempts": len(billed), "gateway_billed_usd": round(gateway_usd, 9),
            "gateway_billed_received": len(received), "gateway_received_usd": round(usd(received), 9),
            "gateway_received_tokens": [sum(t[0] for t, _ in received), sum(t[1] for t, _ in received)],
            "cache_paid_calls": len(stored), "cache_paid_usd": round(client_usd, 9),
            "cache_paid_tokens": [sum(s["tokens"][0] for s in stored.values()), sum(s["tokens"][1] for s in stored.values())],
            "workers_usage": usage.as_dict(),
        },
        "latency_s": {"requests": len(lat), "p50": round(_pct(lat, 50), 4), "p99": round(_pct(lat, 99), 4)},
        "errors": [e for o in outs for e in o["errors"]][:20], "reruns": sum(o["reruns"] for o in outs),
    }


def _wanted(a, w: int) -> list[str]:
    return [f"{kind}-{mode}-{i}" for kind in VENDORS for mode, n in (("online", a.online), ("batch", a.batch))
            for i in shard(n, a.workers, w)]


def _pct(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else (xs[0] if xs else 0.0)


def checks(r: dict) -> dict:
    """The invariants, each True when it holds."""
    acc = r["accounting"]
    return {
        "no_rows_lost": r["rows_lost"] == 0 and r["requests_answered"] == r["requests"],
        "nothing_paid_again": r["paid_again_after_received"]["count"] == 0 and r["answers_differing_between_workers"] == 0,
        "every_stored_answer_billed": r["stored_answers_never_billed"] == 0,
        "accounting_matches_gateway": (acc["cache_paid_calls"] == acc["gateway_billed_received"]
                                       and acc["cache_paid_tokens"] == acc["gateway_received_tokens"]
                                       and abs(acc["cache_paid_usd"] - acc["gateway_received_usd"]) < 1e-9
                                       and acc["gateway_billed_attempts"] == acc["gateway_billed_received"]
                                       + r["paid_again_after_received"]["count"] + r["billed_not_received"]["count"]),
        # what the runs report in their stages' `usage` adds up to the same
        "runs_usage_matches_gateway": (acc["workers_usage"]["calls"] == acc["gateway_billed_received"]
                                       and [acc["workers_usage"]["input_tokens"], acc["workers_usage"]["output_tokens"]]
                                       == acc["gateway_received_tokens"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--online", type=int, default=3000, help="online requests per vendor")
    ap.add_argument("--batch", type=int, default=600, help="Batch API requests per vendor")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--fault-rate", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=2.0, help="the clients' per-request timeout_s")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench/results/faults.json"))
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--config", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker is not None:
        print(json.dumps(worker(json.loads(Path(a.config).read_text()), a.worker)))
        return

    from llamaduo import hardware
    from llamaduo.atomic import write_json

    cfg = {k: v for k, v in vars(a).items() if k not in ("worker", "config", "out")}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "base").mkdir()
        (Path(tmp) / "faults").mkdir()
        base = run_phase(argparse.Namespace(**cfg), 0.0, Path(tmp) / "base")
        faulted = run_phase(argparse.Namespace(**cfg), a.fault_rate, Path(tmp) / "faults")
    ok = checks(faulted)
    added = {q: round(faulted["latency_s"][q] - base["latency_s"][q], 4) for q in ("p50", "p99")}
    result = {
        "settings": cfg | {"price": PRICE, "fault_mix": fault_mix(a.timeout)},
        "fault_injection": "support/fakes/server.py (fault_rate, rate_faults): Toxiproxy has no server package in PyPI, "
                           "Debian or npm (only clients); HTTP status faults in each vendor's error shape need the vendor fakes",
        "checks": ok, "added_latency_s": added,
        "latency_ratio": {q: round(faulted["latency_s"][q] / base["latency_s"][q], 3) for q in ("p50", "p99")},
        "faults": faulted, "baseline": base, "machine": hardware.describe(),
    }
    write_json(a.out, result)
    f = faulted
    print(f"{f['requests']} requests ({a.online} online + {a.batch} batch per vendor x 3 vendors), {a.workers} workers, "
          f"fault rate {a.fault_rate:.0%}: {sum(sum(v.values()) for v in f['injected'].values())} faults injected")
    print(f"answered {f['requests_answered']}, rows lost {f['rows_lost']}, paid again after received "
          f"{f['paid_again_after_received']['count']}, billed not received {f['billed_not_received']['count']} "
          f"(${f['billed_not_received']['usd']:.6f})")
    acc = f["accounting"]
    print(f"gateway billed {acc['gateway_billed_attempts']} (${acc['gateway_billed_usd']:.6f}); cache paid "
          f"{acc['cache_paid_calls']} (${acc['cache_paid_usd']:.6f}) = gateway received {acc['gateway_billed_received']} "
          f"(${acc['gateway_received_usd']:.6f})")
    print(f"latency p50 {base['latency_s']['p50']:.3f} -> {f['latency_s']['p50']:.3f} s, p99 {base['latency_s']['p99']:.3f} -> "
          f"{f['latency_s']['p99']:.3f} s (added {added['p50']:.3f} / {added['p99']:.3f} s); wall {base['wall_s']} -> {f['wall_s']} s")
    print(f"peak RSS: worker {f['peak_rss_mib']['worker_max']} MiB, gateway {f['peak_rss_mib']['gateway_max']} MiB")
    print(f"checks: {ok}")
    print(f"wrote {a.out}")
    if not all(ok.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
