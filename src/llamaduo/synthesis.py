"""Synthesis: ask the service LLM for new (instruction, response) pairs, each request seeded by one train pair."""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass

from llamaduo.prompts import render
from llamaduo.providers.base import ChatRequest

PAIRS_SCHEMA = {
    "type": "object",
    "properties": {
        "pairs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"instruction": {"type": "string"}, "response": {"type": "string"}},
                "required": ["instruction", "response"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["pairs"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Plan:
    """One synthesis request: which seed, which topic, and the request itself."""

    request_id: str
    seed: dict
    topic: str
    request: ChatRequest


def plan_requests(train: list[dict], *, n_requests: int, pairs_per_request: int, topics: list[str], seed: int,
                  temperature: float, max_tokens: int, prompt_dir: str = "prompts") -> list[Plan]:
    """The first `n_requests` of a fixed, seeded sequence: a larger budget extends the same sequence,
    so earlier requests (and their cached answers) stay exactly the same."""
    if not train:
        raise ValueError("synthesis needs at least one train row as a seed")
    rng = random.Random(seed)
    order: list[dict] = []
    plans = []
    for i in range(n_requests):
        if not order:  # draw seeds without replacement; reshuffle when exhausted
            order = sorted(train, key=lambda r: r["id"])
            rng.shuffle(order)
        row = order.pop()
        topic = topics[rng.randrange(len(topics))]
        text = render(f"synthesize/{row['task']}", fallback="synthesize/default", prompt_dir=prompt_dir,
                      instruction=row["instruction"], response=row["response"], topic=topic, n=pairs_per_request)
        req = ChatRequest(messages=(("user", text),), temperature=temperature, max_tokens=max_tokens,
                          json_schema=PAIRS_SCHEMA, schema_name="pairs")
        rid = hashlib.sha256(f"{i}\n{req.key_material()}".encode()).hexdigest()[:16]
        plans.append(Plan(rid, row, topic, req))
    return plans


def parse_pairs(text: str) -> tuple[list[dict], str | None]:
    """Pairs from one answer, and the reason when the answer is unusable (never a silent empty default)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return [], f"not JSON ({exc.msg} at char {exc.pos})"
    pairs = obj.get("pairs") if isinstance(obj, dict) else None
    if not isinstance(pairs, list):
        return [], "no `pairs` list"
    good = [
        {"instruction": p["instruction"].strip(), "response": p["response"].strip()}
        for p in pairs
        if isinstance(p, dict) and isinstance(p.get("instruction"), str) and isinstance(p.get("response"), str)
    ]
    if not good and pairs:
        return [], "pairs without string `instruction` and `response`"
    return good, None


def synthesize(*, train: list[dict], params) -> tuple[list[dict], dict]:
    """Request pairs in rounds until `synth.volume` parsed pairs exist or `synth.max_requests` is spent; say which."""
    s = params.synth
    stats = {"volume": s.volume, "requests": 0, "pairs": 0, "failed_answers": 0, "failure_reasons": {}, "stopped_by": "volume"}
    if s.volume == 0:
        stats["stopped_by"] = "volume is 0"
        return [], stats
    from llamaduo.cache import CallCache
    from llamaduo.calls import Usage, run_calls
    from llamaduo.providers import get_provider

    plans = plan_requests(train, n_requests=s.max_requests, pairs_per_request=s.pairs_per_request, topics=s.topics,
                          seed=s.seed, temperature=s.temperature, max_tokens=s.max_tokens)
    provider = get_provider(s.provider, params.providers[s.provider])
    cache = CallCache(params.cache.path)
    usage, rows, done = Usage(), [], 0
    with provider:
        while len(rows) < s.volume and done < len(plans):
            # ask for what is missing, assuming the yield so far (every answer parsed fully at first)
            per_request = len(rows) / done if done and rows else s.pairs_per_request
            want = math.ceil((s.volume - len(rows)) / max(per_request, 0.5))
            batch = plans[done:done + want]
            results, u = run_calls(provider, [pl.request for pl in batch], cache=cache, desc=f"synthesize ({provider.name})")
            for k in usage.__dict__:
                setattr(usage, k, getattr(usage, k) + getattr(u, k))
            for pl, res in zip(batch, results):
                for choice in res.choices:
                    pairs, err = parse_pairs(choice.text if choice.finish_reason != "length" else "")
                    if err is not None:
                        reason = "truncated at max_tokens" if choice.finish_reason == "length" else err.split(" (")[0]
                        stats["failed_answers"] += 1
                        stats["failure_reasons"][reason] = stats["failure_reasons"].get(reason, 0) + 1
                    for j, pair in enumerate(pairs):
                        rows.append({"id": f"{pl.request_id}-{j}", "task": pl.seed["task"], **pair,
                                     "seed_id": pl.seed["id"], "provider": provider.name, "model": provider.model,
                                     "request_id": pl.request_id, "cycle": s.cycle})
            done += len(batch)
    cache.close()
    rows = rows[: s.volume]
    stats.update(requests=done, pairs=len(rows), usage=usage.as_dict(),
                 stopped_by="volume" if len(rows) >= s.volume else "max_requests")
    if stats["stopped_by"] == "max_requests":
        print(f"synthesize: stopped by `synth.max_requests` ({s.max_requests}) with {len(rows)} of {s.volume} pairs")
    return rows, stats
