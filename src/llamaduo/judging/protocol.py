"""The judging protocol: what a judge is asked (single-answer grading and pairwise comparison, JSON schemas,
prompt templates), the re-ask for an unusable reply, and the strict parsing of replies: a failure is a
reason, never a number."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from llamaduo import chat
from llamaduo.judging.names import METRICS
from llamaduo.prompts import render, template_sha
from llamaduo.providers.base import ChatRequest

TEMPLATE = "judge/single"
PAIRWISE_TEMPLATE = "judge/pairwise"
RETRY_TEMPLATE = "judge/retry"
CONTEXT_TEMPLATE = "judge/context"  # the system prompt and earlier turns, in single and pairwise's `$context` slot

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

# Every text a judge reads (instruction, reference, answers, context, a re-ask's cause) sits between an opening
# and a closing marker. Fixed markers (`<<<` / `>>>`) let an answer close its block and address the judge; these
# carry a tag drawn from a hash of the request's texts, so no text can know its tag in advance. A hash and not a
# random draw: the call cache keys on the full request text, so the same texts must give the same prompt on every
# run (a random marker would make each rerun pay again).
#
# The tag hashes the texts a prompt's judge requests share (context, instruction, reference), not the answers:
# then the K answers' gradings and both orders of every comparison begin with the same text (HEAD_TEMPLATE, then
# the request's own part), and a server with prefix caching (vLLM; the vendors' prompt caching) computes that
# prefix once per test prompt instead of once per request. An answer cannot learn its tag without the reference,
# which the answering model never sees; an answer that holds the tag anyway draws the next salt for its request.
TAG_CHARS = 16  # hex digits of sha256: 64 bits
HEAD_TEMPLATE = "judge/head"  # intro, context, instruction, reference: the start every judge prompt shares


def _tag(texts: tuple[str, ...], salt: int) -> str:
    material = "\0".join((str(salt), *texts)).encode()
    return hashlib.sha256(material).hexdigest()[:TAG_CHARS]


def fence(*texts: str, others: tuple[str, ...] = ()) -> dict[str, str]:
    """The `$open` / `$close` markers of one request: `<<<TAG` and `TAG>>>`, TAG drawn from `texts`. `others`
    are fenced too but leave the tag alone (the answers: requests that share `texts` share the tag). Should any
    text contain the tag anyway, the next salt's tag is drawn (still deterministic), so a marker never occurs
    inside the content it fences."""
    salt = 0
    while True:
        tag = _tag(texts, salt)
        if not any(tag in t for t in (*texts, *others)):
            return {"open": f"<<<{tag}", "close": f"{tag}>>>"}
        salt += 1


def context_text(row: dict) -> str:
    """The instruction's context for a judge prompt: the row's system prompt and earlier turns as text, or ""
    for a single-turn row without one (its prompt then has no context block at all)."""
    return chat.render_context(row)


def prompt_sha(name: str, prompt_dir: str = "prompts") -> str:
    """The hash of what a judge prompt is made of: the shared head, the context block and template `name`."""
    return template_sha((HEAD_TEMPLATE, CONTEXT_TEMPLATE, name), prompt_dir)


def _judge_prompt(name: str, prompt_dir: str, context: str, instruction: str, reference: str, **answers: str) -> str:
    """The shared head (context, instruction, reference) followed by template `name` filled with `answers`, every
    text fenced with the request's markers; `context` (raw, "" for none) becomes `prompts/judge/context.md` in
    the head's `${context}` slot."""
    marks = fence(context, instruction, reference, others=tuple(answers.values()))
    block = render(CONTEXT_TEMPLATE, prompt_dir=prompt_dir, context=context, **marks) if context else ""
    head = render(HEAD_TEMPLATE, prompt_dir=prompt_dir, context=block, instruction=instruction, reference=reference,
                  **marks)
    return head + render(name, prompt_dir=prompt_dir, **marks, **answers)


def single_request(instruction: str, reference: str, answer: str, *, m: int, temperature: float, max_tokens: int,
                   prompt_dir: str = "prompts", context: str = "") -> ChatRequest:
    """`context`: `context_text` of the test row ("" for none)."""
    text = _judge_prompt(TEMPLATE, prompt_dir, context, instruction=instruction, reference=reference, answer=answer)
    # n=m: one call, input paid once, m independent judgments
    return ChatRequest(messages=(("user", text),), temperature=temperature, max_tokens=max_tokens, n=m,
                       json_schema=SCORE_SCHEMA, schema_name="grade")


def build_requests(responses: list[dict], test_by_id: dict[str, dict], *, m: int, temperature: float, max_tokens: int,
                   prompt_dir: str = "prompts") -> list[ChatRequest]:
    reqs = []
    for r in responses:
        ref = test_by_id[r["prompt_id"]]
        reqs.append(single_request(ref["instruction"], ref["response"], r["answer"], m=m, temperature=temperature,
                                   max_tokens=max_tokens, prompt_dir=prompt_dir, context=context_text(ref)))
    return reqs


def pairwise_request(instruction: str, reference: str, answer_a: str, answer_b: str, *, temperature: float,
                     max_tokens: int, prompt_dir: str = "prompts", context: str = "") -> ChatRequest:
    text = _judge_prompt(PAIRWISE_TEMPLATE, prompt_dir, context, instruction=instruction, reference=reference,
                         answer_a=answer_a, answer_b=answer_b)
    return ChatRequest(messages=(("user", text),), temperature=temperature, max_tokens=max_tokens, n=1,
                       json_schema=VERDICT_SCHEMA, schema_name="verdict")


def retry_request(req: ChatRequest, cause: str, n: int, attempt: int, prompt_dir: str = "prompts") -> ChatRequest:
    """The same question once more, saying why reply number `attempt` was unusable. One user turn (every vendor
    takes it), and a request of its own for each attempt, so the call cache does not hand back the unusable reply.
    The cause is fenced too: it can quote the judge's reply (a refusal, a value), which an answer may have steered."""
    (role, text), = req.messages
    note = render(RETRY_TEMPLATE, prompt_dir=prompt_dir, prompt=text, cause=cause, attempt=attempt,
                  **fence(text, cause))
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
    except (ValueError, RecursionError) as exc:
        # valid JSON Python will not hold: an integer past 4300 digits, nesting past the recursion limit;
        # a reply is never allowed to stop the stage
        return None, f"not JSON ({type(exc).__name__})"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    return obj, None


def _shown(value, limit: int = 40) -> str:
    """A value of the reply as it appears in a cause: JSON, cut short (causes are stored in rows and re-asks)."""
    try:
        text = json.dumps(value)
    except ValueError:  # an int past the digit limit
        text = "a huge number"
    return text if len(text) <= limit else text[:limit] + "..."


def _check_keys(obj: dict, allowed: tuple[str, ...]) -> str | None:
    """The reply's keys against the schema's: every key required, nothing else (`additionalProperties: false`;
    a vendor without strict structured output does not enforce it, so we do)."""
    extra = sorted(set(obj) - set(allowed), key=str)
    if extra:
        names = ", ".join(_shown(k) for k in extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        return f"keys outside the schema ({names})"
    return None


def _reason(obj: dict) -> tuple[str | None, str | None]:
    if "reason" not in obj:
        return None, "missing reason"
    r = obj["reason"]
    return (r, None) if isinstance(r, str) else (None, f"`reason` is not a string ({_shown(r)})")


def _score(obj: dict, name: str) -> tuple[float | None, str | None]:
    """A score as the schema has it: an integer 0-100. JSON has one number type, so a float with no fraction
    (85.0: some vendors' encoders and constrained decoders write integers so) is the integer 85 and is accepted;
    85.5 is off the scale the judge was given, and a string or a bool is no number: unusable, never rounded."""
    if name not in obj:
        return None, f"missing {name}"
    v = obj[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        return None, f"`{name}` is not an integer ({_shown(v)})"  # NaN and Infinity are not integers either
    if not 0 <= v <= 100:
        return None, f"`{name}` outside 0-100 ({_shown(v)})"
    return float(v), None


def parse_judgment(text: str, finish_reason: str | None, refusal: str | None = None) -> tuple[dict | None, str | None]:
    """({precision, similarity, reason}, None) from one judgment, or (None, why it is unusable): SCORE_SCHEMA
    checked strictly (both scores integers 0-100, a string reason, no other key). The cause names the first
    problem, in a fixed order (scores, reason, extra keys), and its variable part stays in parentheses so that
    eval.json's `failure_reasons` counts one kind per problem, not per value."""
    obj, err = _json_object(text, finish_reason, refusal)
    if err:
        return None, err
    scores: dict = {}
    for name in METRICS:
        scores[name], err = _score(obj, name)
        if err:
            return None, err
    reason, err = _reason(obj)
    err = err or _check_keys(obj, ("reason", *METRICS))
    if err:
        return None, err
    return scores | {"reason": reason}, None


def parse_score(text: str, finish_reason: str | None, refusal: str | None = None) -> tuple[dict | None, str | None]:
    """({precision, similarity}, None) from one judgment, or (None, why it is unusable)."""
    value, err = parse_judgment(text, finish_reason, refusal)
    return ({m: value[m] for m in METRICS} if value else None), err


def parse_verdict(text: str, finish_reason: str | None, refusal: str | None = None) -> tuple[dict | None, str | None]:
    """({winner: "A" | "B" | "tie", reason}, None), or (None, why it is unusable): VERDICT_SCHEMA checked
    strictly, except that the winner's case and surrounding spaces are forgiven ("b", " Tie"): they leave no
    doubt which answer the judge meant."""
    obj, err = _json_object(text, finish_reason, refusal)
    if err:
        return None, err
    if "winner" not in obj:
        return None, "missing winner"
    w = obj["winner"]
    if not isinstance(w, str) or w.strip().lower() not in ("a", "b", "tie"):
        return None, f"`winner` is not A, B or tie ({_shown(w)})"
    reason, err = _reason(obj)
    err = err or _check_keys(obj, ("reason", "winner"))
    if err:
        return None, err
    w = w.strip()
    return {"winner": w.upper() if w.lower() != "tie" else "tie", "reason": reason}, None
