"""The service baseline (the paper's Table 1): the service LLMs answer the test prompts, and their answers are
judged exactly like the local model's (same panel, prompt, M and re-asks)."""

from __future__ import annotations

from llamaduo import chat
from llamaduo.judging.grading import grade
from llamaduo.providers.base import ChatRequest


def answer_with_services(providers: dict, test: list[dict], j, *, cache) -> tuple[list[dict], dict]:
    """The baseline's answers: each service LLM answers each test prompt (`judge.baseline.samples` per call).
    Through the call engine, so a rerun pays nothing. Rows of the `baseline_responses` table, usage per service."""
    from llamaduo.providers.engine import run_calls

    b = j.baseline
    rows, usages = [], {}
    for name in j.services:
        provider = providers[name]
        # the conversation the local model gets (inference.generate): system prompt, earlier turns, instruction,
        # so both answer the same question in the same context (every service API has a system role)
        requests = [ChatRequest(messages=chat.as_request(chat.messages(r, response=False)), temperature=b.temperature,
                                max_tokens=b.max_tokens, n=b.samples) for r in test]
        # keep_failed: a prompt the service rejects on its own (a 400: too long for its context) has no baseline
        # answer (counted in usage `failed`), and the rest of the baseline goes on
        results, usage = run_calls(provider, requests, cache=cache, desc=f"baseline answers ({name})", keep_failed=True)
        for r, res in zip(test, results):
            if res.error:
                continue
            for k, c in enumerate(res.choices):
                rows.append({"service": name, "service_model": provider.model, "served_model": res.model or None,
                             "prompt_id": r["id"], "task": r["task"],
                             "sample": k, "answer": c.text if c.text or not c.refusal else c.refusal,
                             "tokens": res.output_tokens // len(res.choices) if res.output_tokens else None,
                             "finish_reason": c.finish_reason})
        usages[name] = usage.as_dict()
    return rows, usages


def baseline(*, test: list[dict], providers: dict, j, cache, prompt_dir: str = "prompts") -> tuple[list[dict], list[dict], dict, dict]:
    """The service baseline: answers from every service `j.services`, judged exactly as the local ones (same panel
    `j.panel`, prompt, M and re-asks); `providers` holds them all, open, by name. Returns answers, judgment rows,
    answer usage and judge usage (per provider)."""
    test_by_id = {r["id"]: r for r in test}
    judgments, judge_usage = [], {}
    answers, answer_usage = answer_with_services(providers, test, j, cache=cache)
    for rank, name in enumerate(j.panel):
        rows, usage = grade(providers[name], answers, test_by_id, j, primary=rank == 0, cache=cache, prompt_dir=prompt_dir)
        judgments += rows
        judge_usage[name] = usage.as_dict()
    return answers, judgments, answer_usage, judge_usage
