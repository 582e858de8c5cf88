"""Service LLM as judge: single-answer grading (precision and similarity, 0-100), M judgments per answer."""

from __future__ import annotations

import json

from llamaduo.prompts import render, template_sha
from llamaduo.providers.base import ChatRequest, ChatResult

TEMPLATE = "judge/single"
METRICS = ("precision", "similarity")
SCORE_SCHEMA = {
    "type": "object",
    "properties": {
        "reason": {"type": "string", "maxLength": 300},  # a rambling reason would truncate the scores
        "similarity": {"type": "integer", "minimum": 0, "maximum": 100},
        "precision": {"type": "integer", "minimum": 0, "maximum": 100},
    },
    "required": ["reason", "similarity", "precision"],
    "additionalProperties": False,
}


def build_requests(responses: list[dict], test_by_id: dict[str, dict], *, m: int, temperature: float, max_tokens: int,
                   prompt_dir: str = "prompts") -> list[ChatRequest]:
    reqs = []
    for r in responses:
        ref = test_by_id[r["prompt_id"]]
        text = render(TEMPLATE, prompt_dir=prompt_dir, instruction=ref["instruction"], reference=ref["response"],
                      answer=r["answer"])
        # n=m: one call, input paid once, m independent judgments
        reqs.append(ChatRequest(messages=(("user", text),), temperature=temperature, max_tokens=max_tokens, n=m,
                                json_schema=SCORE_SCHEMA, schema_name="grade"))
    return reqs


def parse_score(text: str, finish_reason: str | None) -> tuple[dict | None, str | None]:
    """Scores from one judgment, or the reason it is unusable. A failure is never turned into a zero."""
    if finish_reason == "length":
        return None, "truncated at max_tokens"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg} at char {exc.pos})"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    scores = {}
    for name in METRICS:
        v = obj.get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None, f"`{name}` missing or not a number"
        if not 0 <= v <= 100:
            return None, f"`{name}` {v} outside 0-100"
        scores[name] = float(v)
    return scores, None


def judgment_rows(responses: list[dict], results: list[ChatResult], *, judge: str, judge_model: str,
                  prompt_dir: str = "prompts") -> list[dict]:
    sha = template_sha(TEMPLATE, prompt_dir)
    rows = []
    for r, res in zip(responses, results):
        for rep, choice in enumerate(res.choices):
            scores, err = parse_score(choice.text, choice.finish_reason)
            rows.append({
                "prompt_id": r["prompt_id"], "task": r["task"], "sample": r["sample"], "repeat": rep,
                "judge": judge, "judge_model": judge_model, "prompt_sha": sha, "ok": err is None,
                "precision": scores["precision"] if scores else None,
                "similarity": scores["similarity"] if scores else None, "error": err,
            })
    return rows


def evaluate(*, responses: list[dict], test: list[dict], params) -> tuple[list[dict], dict]:
    """Judge every answer M times with the configured judge; return judgment rows and the score summary."""
    from llamaduo.cache import CallCache
    from llamaduo.calls import run_calls
    from llamaduo.metrics import by_task, summarize
    from llamaduo.providers import get_provider

    j = params.judge
    test_by_id = {r["id"]: r for r in test}
    missing = {r["prompt_id"] for r in responses} - set(test_by_id)
    if missing:
        raise ValueError(f"{len(missing)} answer(s) refer to prompts not in the test split, e.g. {sorted(missing)[0]}")
    provider = get_provider(j.provider, params.providers[j.provider])
    requests = build_requests(responses, test_by_id, m=j.m, temperature=j.temperature, max_tokens=j.max_tokens)
    cache = CallCache(params.cache.path)
    try:
        with provider:
            results, usage = run_calls(provider, requests, cache=cache, desc=f"judge ({provider.name})")
    finally:
        cache.close()
    rows = judgment_rows(responses, results, judge=provider.name, judge_model=provider.model)
    summary = summarize(rows, j.zetas) | {"judge": provider.name, "m": j.m, "usage": usage.as_dict(),
                                          "by_task": by_task(rows, j.zetas)}
    return rows, summary
