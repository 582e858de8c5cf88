"""Judging calls: M judgments per answer as one call with n=M against M separate calls.

Both runs grade the same answers (real test prompts and references from data/coverage) with the real judge
prompt through the real call engine, against a loopback OpenAI-wire fake (support/fakes/judge_server.py).
What it measures is the HTTP calls each way, counted by the fake server, and the wall time. The fake bills a
call's prompt once whatever its n, so its input-token tally restates the call count and is kept only to check
that the engine's Usage agrees with the server; what a vendor bills for n is the vendor's rule.

    .venv/bin/python bench/judge.py [--answers 48 --m 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "support"))  # the loopback fakes, shared with the tests

from fakes.judge_server import JudgeFake  # noqa: E402
from llamaduo import hardware  # noqa: E402
from llamaduo.atomic import write_json  # noqa: E402
from llamaduo.config import ProviderParams  # noqa: E402
from llamaduo.judging.protocol import build_requests  # noqa: E402
from llamaduo.providers import get_provider  # noqa: E402
from llamaduo.providers.cache import CallCache  # noqa: E402
from llamaduo.providers.engine import run_calls  # noqa: E402


def answers(n: int) -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in (ROOT / "data/coverage/summarize.jsonl").read_text().splitlines()[:n]]
    test = {f"p{i}": {"id": f"p{i}", "instruction": r["messages"][0]["content"], "response": r["messages"][1]["content"]}
            for i, r in enumerate(rows)}
    # the answer under judgment: the reference's first sentence (any text does; both runs judge the same)
    responses = [{"prompt_id": k, "task": "summarize", "sample": 0, "answer": v["response"].split(". ")[0]}
                 for k, v in test.items()]
    return responses, test


def grade(text: str) -> str:
    return json.dumps({"reason": "fixed", "similarity": 50, "precision": 50})


def run(native_n: bool, requests, tmp: Path) -> dict:
    with JudgeFake(answer=lambda body, k: grade(body["messages"][0]["content"])) as fake:
        params = ProviderParams(kind="openai_compatible", model="judge", base_url=fake.base_url, concurrency=8,
                                max_retries=0, native_n=native_n)
        cache = CallCache(tmp / f"cache-{native_n}.sqlite")
        start = time.perf_counter()
        results, usage = run_calls(get_provider("judge", params), requests, cache=cache, desc="judge", progress=False)
        wall = time.perf_counter() - start
        cache.close()
        judgments = sum(len(r.choices) for r in results)
        return {"http_calls": len(fake.requests), "judgments": judgments, "billed_input_tokens": fake.billed_input,
                "billed_output_tokens": fake.billed_output, "usage_input_tokens": usage.input_tokens,
                "wall_s": round(wall, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--answers", type=int, default=48)
    ap.add_argument("--m", type=int, default=3)
    args = ap.parse_args()
    responses, test = answers(args.answers)
    requests = build_requests(responses, test, m=args.m, temperature=0.7, max_tokens=200, prompt_dir=str(ROOT / "prompts"))
    with tempfile.TemporaryDirectory() as tmp:
        one = run(True, requests, Path(tmp))
        sep = run(False, requests, Path(tmp))
    assert one["judgments"] == sep["judgments"] == args.answers * args.m
    for name, r in (("n=M", one), ("M separate calls", sep)):
        if r["usage_input_tokens"] != r["billed_input_tokens"]:
            sys.exit(f"{name}: the engine's Usage counted {r['usage_input_tokens']} input tokens, "
                     f"the server billed {r['billed_input_tokens']}")
    out = {"answers": args.answers, "m": args.m, "n_equals_m": one, "m_separate_calls": sep,
           "calls_ratio": round(one["http_calls"] / sep["http_calls"], 4),
           "note": ("calls_ratio: HTTP calls with n=M over M separate calls, counted by the fake server. Billed tokens "
                    "are the fake's tally (whitespace words, each call's prompt once), so they restate the call count "
                    "and only check that usage_input_tokens agrees with the server")}
    write_json(ROOT / "bench/results/judge.json", out | {"machine": hardware.describe()})
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
