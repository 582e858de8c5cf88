"""Synthesis requests: one per train seed pair (a fixed, seeded sequence), and the strict parsing of the pairs
the service returns (an unusable answer is a reason, never a silent empty list)."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

from llamaduo.errors import DataError
from llamaduo.prompts import render
from llamaduo.providers.base import ChatRequest

# a fragment, not a task's template (task names never start with "_")
SYSTEM_TEMPLATE = "synthesize/_system"

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


def system_block(row: dict, prompt_dir: str = "prompts") -> str:
    """The seed's system prompt for a synthesis template's `$system` slot (`prompts/synthesize/_system.md`: new
    pairs are written for it), or "" when it has none, so that request stays byte-identical to the template
    without the slot (and its cached answer stays valid). The seed's earlier turns are left out: new pairs are
    single-turn."""
    system = row.get("system")
    return render(SYSTEM_TEMPLATE, prompt_dir=prompt_dir, system=system) if system else ""


def plan_requests(train: list[dict], *, n_requests: int, pairs_per_request: int, topics: list[str], seed: int,
                  temperature: float, max_tokens: int, prompt_dir: str = "prompts") -> list[Plan]:
    """The first `n_requests` of a fixed, seeded sequence: a larger budget extends the same sequence,
    so earlier requests (and their cached answers) stay exactly the same."""
    if not train:
        raise DataError("synthesis needs at least one train row as a seed")
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
                      system=system_block(row, prompt_dir), instruction=row["instruction"], response=row["response"],
                      topic=topic, n=pairs_per_request)
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
