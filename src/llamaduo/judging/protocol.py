"""The judging protocol: what a judge is asked (single-answer grading and pairwise comparison, JSON schemas,
prompt templates), the re-ask for an unusable reply, and the strict parsing of replies: a failure is a
reason, never a number."""

from __future__ import annotations

import json
from dataclasses import replace

from llamaduo import chat
from llamaduo.prompts import render
from llamaduo.providers.base import ChatRequest

TEMPLATE = "judge/single"
PAIRWISE_TEMPLATE = "judge/pairwise"
RETRY_TEMPLATE = "judge/retry"
CONTEXT_TEMPLATE = "judge/context"  # the system prompt and earlier turns, in single and pairwise's `$context` slot
METRICS = ("precision", "similarity")
LOCAL = "local"  # the `answerer` of the local model's answers (services are named by their provider)

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
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "reason": {"type": "string", "maxLength": 300},
        "winner": {"type": "string", "enum": ["A", "B", "tie"]},
    },
    "required": ["reason", "winner"],
    "additionalProperties": False,
}


# -- requests


def context_block(row: dict, prompt_dir: str = "prompts") -> str:
    """The instruction's context for a judge prompt's `$context` slot: the row's system prompt and earlier turns
    (`prompts/judge/context.md`), or "" for a single-turn row without one, so its prompt stays byte-identical
    to the template without the slot (and its cached judgments stay valid)."""
    context = chat.render_context(row)
    return render(CONTEXT_TEMPLATE, prompt_dir=prompt_dir, context=context) if context else ""


def single_request(instruction: str, reference: str, answer: str, *, m: int, temperature: float, max_tokens: int,
                   prompt_dir: str = "prompts", context: str = "") -> ChatRequest:
    """`context`: `context_block` of the test row ("" for none)."""
    text = render(TEMPLATE, prompt_dir=prompt_dir, context=context, instruction=instruction, reference=reference,
                  answer=answer)
    # n=m: one call, input paid once, m independent judgments
    return ChatRequest(messages=(("user", text),), temperature=temperature, max_tokens=max_tokens, n=m,
                       json_schema=SCORE_SCHEMA, schema_name="grade")


def build_requests(responses: list[dict], test_by_id: dict[str, dict], *, m: int, temperature: float, max_tokens: int,
                   prompt_dir: str = "prompts") -> list[ChatRequest]:
    reqs = []
    for r in responses:
        ref = test_by_id[r["prompt_id"]]
        reqs.append(single_request(ref["instruction"], ref["response"], r["answer"], m=m, temperature=temperature,
                                   max_tokens=max_tokens, prompt_dir=prompt_dir, context=context_block(ref, prompt_dir)))
    return reqs


def pairwise_request(instruction: str, reference: str, answer_a: str, answer_b: str, *, temperature: float,
                     max_tokens: int, prompt_dir: str = "prompts", context: str = "") -> ChatRequest:
    text = render(PAIRWISE_TEMPLATE, prompt_dir=prompt_dir, context=context, instruction=instruction,
                  reference=reference, answer_a=answer_a, answer_b=answer_b)
    return ChatRequest(messages=(("user", text),), temperature=temperature, max_tokens=max_tokens, n=1,
                       json_schema=VERDICT_SCHEMA, schema_name="verdict")


def retry_request(req: ChatRequest, cause: str, n: int, attempt: int, prompt_dir: str = "prompts") -> ChatRequest:
    """The same question once more, saying why reply number `attempt` was unusable. One user turn (every vendor
    takes it), and a request of its own for each attempt, so the call cache does not hand back the unusable reply."""
    (role, text), = req.messages
    note = render(RETRY_TEMPLATE, prompt_dir=prompt_dir, prompt=text, cause=cause, attempt=attempt)
    return replace(req, messages=((role, note),), n=n)


def _json_object(choice_text: str, finish_reason: str | None, refusal: str | None) -> tuple[dict | None, str | None]:
    if finish_reason == "refusal" or refusal:
        return None, f"refused ({(refusal or '').strip()[:120]})"
    if finish_reason == "content_filter":
        return None, "blocked by the provider's content filter"
    if finish_reason == "length":
        return None, "truncated at max_tokens"
    if not choice_text.strip():
        return None, "empty reply"
    try:
        obj = json.loads(choice_text)
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg} at char {exc.pos})"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    return obj, None


def _reason(obj: dict) -> str | None:
    r = obj.get("reason")
    return r if isinstance(r, str) else None


def parse_judgment(text: str, finish_reason: str | None, refusal: str | None = None) -> tuple[dict | None, str | None]:
    """({precision, similarity, reason}, None) from one judgment, or (None, why it is unusable)."""
    obj, err = _json_object(text, finish_reason, refusal)
    if err:
        return None, err
    scores: dict = {}
    for name in METRICS:
        v = obj.get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None, f"`{name}` missing or not a number"
        if not 0 <= v <= 100:
            return None, f"`{name}` {v} outside 0-100"
        scores[name] = float(v)
    return scores | {"reason": _reason(obj)}, None


def parse_score(text: str, finish_reason: str | None, refusal: str | None = None) -> tuple[dict | None, str | None]:
    """({precision, similarity}, None) from one judgment, or (None, why it is unusable)."""
    value, err = parse_judgment(text, finish_reason, refusal)
    return ({m: value[m] for m in METRICS} if value else None), err


def parse_verdict(text: str, finish_reason: str | None, refusal: str | None = None) -> tuple[dict | None, str | None]:
    """({winner: "A" | "B" | "tie", reason}, None), or (None, why it is unusable)."""
    obj, err = _json_object(text, finish_reason, refusal)
    if err:
        return None, err
    w = obj.get("winner")
    if not isinstance(w, str) or w.strip().lower() not in ("a", "b", "tie"):
        return None, f"`winner` {w!r} is not A, B or tie"
    w = w.strip()
    return {"winner": w.upper() if w.lower() != "tie" else "tie", "reason": _reason(obj)}, None
