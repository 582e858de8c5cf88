"""Call-engine throughput: 2,000 requests against a loopback OpenAI-format server with 200 ms latency and a
requests-per-minute limit, then the same 2,000 again (all from the cache).

Ideal throughput is min(concurrency / latency, RPM / 60) requests a second; the goal is >= 0.9 of it with no
429 from the server, and a re-run that makes zero calls. Prints the figures, writes bench/results/providers.json.

    .venv/bin/python bench/providers.py [--requests 2000] [--latency 0.2] [--concurrency 64] [--rpm 6000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from llamaduo import hardware
from llamaduo.atomic import write_json
from llamaduo.config import ProviderParams
from llamaduo.providers import ChatRequest, get_provider
from llamaduo.providers.cache import CallCache
from llamaduo.providers.engine import run_calls

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rpm", type=int, default=6000)
    ap.add_argument("--out", default=str(ROOT / "bench/results/providers.json"))
    a = ap.parse_args()

    ideal = min(a.concurrency / a.latency, a.rpm / 60)
    load_before = os.getloadavg()  # the client and the fake server share these cores with whatever else runs
    requests = [ChatRequest(messages=(("user", f"request {i}"),), temperature=0.7, max_tokens=64) for i in range(a.requests)]
    # the server runs in its own process, as a remote API would (sharing our GIL would slow both); it enforces
    # the RPM limit as a token bucket holding one second of it, the way vendors quantize their per-minute limits
    env = dict(os.environ, PYTHONPATH=str(ROOT / "support") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    server = subprocess.Popen([sys.executable, str(ROOT / "support/fakes/serve.py"), "openai", "--latency", str(a.latency),
                               "--rpm", str(a.rpm)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    base_url = server.stdout.readline().strip()

    def stats() -> dict:
        with urllib.request.urlopen(base_url.rsplit("/v1", 1)[0] + "/_fake/stats") as r:
            return json.loads(r.read())

    with tempfile.TemporaryDirectory() as tmp:
        params = ProviderParams(kind="openai_compatible", model="bench", base_url=base_url,
                                concurrency=a.concurrency, rpm=a.rpm, timeout_s=30, max_retries=5)
        cache = CallCache(Path(tmp) / "calls.sqlite")
        t = time.monotonic()
        _, usage = run_calls(get_provider("bench", params), requests, cache=cache, desc="bench", progress=False)
        wall = time.monotonic() - t
        sent = stats()["requests"]
        t = time.monotonic()
        _, usage2 = run_calls(get_provider("bench", params), requests, cache=cache, desc="bench rerun", progress=False)
        rerun_wall = time.monotonic() - t
        final = stats()
        rerun_calls, rate_limited = final["requests"] - sent, final["rate_limited"]
        cache.close()
    server.stdin.close()
    server.wait(timeout=30)

    achieved = a.requests / wall
    result = {
        "requests": a.requests, "latency_s": a.latency, "concurrency": a.concurrency, "rpm": a.rpm,
        "ideal_rps": round(ideal, 2), "achieved_rps": round(achieved, 2), "throughput_ratio": round(achieved / ideal, 3),
        "wall_s": round(wall, 2), "server_requests": sent, "server_429s": rate_limited, "retries": usage.retries,
        "rerun_wall_s": round(rerun_wall, 3), "rerun_calls": rerun_calls, "rerun_cached": usage2.cached,
    }
    write_json(a.out, result | {"machine": hardware.describe(), "load_avg_before": [round(x, 2) for x in load_before],
                                "load_avg_after": [round(x, 2) for x in os.getloadavg()]})
    print(f"{a.requests} requests, {a.latency * 1000:.0f} ms latency, concurrency {a.concurrency}, RPM {a.rpm}: "
          f"ideal {ideal:.1f} req/s, achieved {achieved:.1f} req/s -> throughput ratio {achieved / ideal:.3f} (goal >= 0.9)")
    print(f"server saw {sent} requests ({rate_limited} answered 429), engine retries {usage.retries}, wall {wall:.1f} s")
    print(f"re-run: {rerun_wall:.2f} s, {rerun_calls} calls (goal: 0), {usage2.cached} from the cache")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
