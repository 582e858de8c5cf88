"""Run a fake server in its own process (for the benchmarks): prints its base URL, serves until stdin closes.

usage: python serve.py openai|anthropic|gemini [--latency S] [--rpm N] [--batch-polls N]
                       [--fault-rate P --rate-faults JSON [--seed N]] [--marked]

--marked: every answer is `<prompt>|<kind>-<n>`, n unique per answer written, so a client's stored answer tells
which billed attempt it received (bench/faults.py). GET /_fake/ledger gives what the server billed.
"""

import argparse
import itertools
import json
import sys

from fakes.anthropic_server import FakeAnthropic
from fakes.gemini_server import FakeGemini
from fakes.openai_server import FakeOpenAI
from fakes.server import prompt_text

FAKES = {"openai": FakeOpenAI, "anthropic": FakeAnthropic, "gemini": FakeGemini}

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=sorted(FAKES))
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--rpm", type=int, default=None)
    ap.add_argument("--batch-polls", type=int, default=1)
    ap.add_argument("--fault-rate", type=float, default=0.0)
    ap.add_argument("--rate-faults", type=json.loads, default=[], help="JSON list of faults (see fakes/server.py)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--marked", action="store_true")
    a = ap.parse_args()
    seq = itertools.count()  # next() is atomic under the GIL: the handler threads share it
    answer = (lambda req, k: f"{prompt_text(req)}|{a.kind}-{next(seq)}") if a.marked else (lambda req, k: "ok")
    faults = [tuple(f) for f in a.rate_faults]
    with FAKES[a.kind](answer=answer, latency=a.latency, rpm=a.rpm, batch_polls=a.batch_polls, fault_rate=a.fault_rate,
                       rate_faults=faults, seed=a.seed) as fake:
        print(fake.base_url, flush=True)
        sys.stdin.read()
