"""Run a fake server in its own process (for the benchmark): prints its base URL, serves until stdin closes.

usage: python serve.py openai|anthropic|gemini [--latency S] [--rpm N]
"""

import argparse
import sys

from fakes.anthropic_server import FakeAnthropic
from fakes.gemini_server import FakeGemini
from fakes.openai_server import FakeOpenAI

FAKES = {"openai": FakeOpenAI, "anthropic": FakeAnthropic, "gemini": FakeGemini}

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=sorted(FAKES))
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--rpm", type=int, default=None)
    a = ap.parse_args()
    with FAKES[a.kind](answer=lambda req, k: "ok", latency=a.latency, rpm=a.rpm) as fake:
        print(fake.base_url, flush=True)
        sys.stdin.read()
