"""Service LLMs as judges.

Single-answer grading (precision and similarity, 0-100, M judgments per answer in one call with n=M) by a
panel of judges, and pairwise comparison of each local answer with the service's answer to the same prompt,
asked in both orders. A reply that cannot be used is re-asked (`judge.retries`), naming the cause; if it stays
unusable it is recorded with its reason and left out of every mean, never scored as zero.

Every judgment row carries the judge's model, its version (the provider identity the call cache keys on:
kind, endpoint, model, and for local weights their content hash), the model the service said answered (an
alias like gpt-4o moves between dated snapshots), the prompt template's hash and the sampling parameters,
so two runs' numbers can be told apart.
"""

from __future__ import annotations

import json
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, fields, replace

from llamaduo.prompts import render, template_sha
from llamaduo.providers.base import ChatRequest, Choice

TEMPLATE = "judge/single"
PAIRWISE_TEMPLATE = "judge/pairwise"
RETRY_TEMPLATE = "judge/retry"
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


def single_request(instruction: str, reference: str, answer: str, *, m: int, temperature: float, max_tokens: int,
                   prompt_dir: str = "prompts") -> ChatRequest:
    text = render(TEMPLATE, prompt_dir=prompt_dir, instruction=instruction, reference=reference, answer=answer)
    # n=m: one call, input paid once, m independent judgments
    return ChatRequest(messages=(("user", text),), temperature=temperature, max_tokens=max_tokens, n=m,
                       json_schema=SCORE_SCHEMA, schema_name="grade")


def build_requests(responses: list[dict], test_by_id: dict[str, dict], *, m: int, temperature: float, max_tokens: int,
                   prompt_dir: str = "prompts") -> list[ChatRequest]:
    reqs = []
    for r in responses:
        ref = test_by_id[r["prompt_id"]]
        reqs.append(single_request(ref["instruction"], ref["response"], r["answer"], m=m, temperature=temperature,
                                   max_tokens=max_tokens, prompt_dir=prompt_dir))
    return reqs


def pairwise_request(instruction: str, reference: str, answer_a: str, answer_b: str, *, temperature: float,
                     max_tokens: int, prompt_dir: str = "prompts") -> ChatRequest:
    text = render(PAIRWISE_TEMPLATE, prompt_dir=prompt_dir, instruction=instruction, reference=reference,
                  answer_a=answer_a, answer_b=answer_b)
    return ChatRequest(messages=(("user", text),), temperature=temperature, max_tokens=max_tokens, n=1,
                       json_schema=VERDICT_SCHEMA, schema_name="verdict")


def retry_request(req: ChatRequest, cause: str, n: int, attempt: int, prompt_dir: str = "prompts") -> ChatRequest:
    """The same question once more, saying why reply number `attempt` was unusable. One user turn (every vendor
    takes it), and a request of its own for each attempt, so the call cache does not hand back the unusable reply."""
    (role, text), = req.messages
    note = render(RETRY_TEMPLATE, prompt_dir=prompt_dir, prompt=text, cause=cause, attempt=attempt)
    return replace(req, messages=((role, note),), n=n)


# -- parsing: a failure is a reason, never a number


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


# -- asking, with re-asks for unusable replies


@dataclass
class Outcome:
    """One judgment slot (request i, repeat k) after the re-asks."""

    value: dict | None
    error: str | None
    attempts: int
    served_model: str = ""  # what the service said answered the call that gave this slot


def _add_usage(total, part) -> None:
    for f in fields(total):
        setattr(total, f.name, getattr(total, f.name) + getattr(part, f.name))


def ask(provider, requests: list[ChatRequest], parse, *, retries: int, cache, desc: str,
        prompt_dir: str = "prompts") -> tuple[list[list[Outcome]], object]:
    """Send `requests`, parse every choice, re-ask the unusable ones up to `retries` times.

    Returns one list of Outcomes per request (one per sample) and the summed Usage of all calls.
    """
    from llamaduo.calls import run_calls

    results, usage = run_calls(provider, requests, cache=cache, desc=desc)
    out = []
    for req, res in zip(requests, results):
        slots = []
        for k in range(req.n):
            c = res.choices[k] if k < len(res.choices) else Choice("", None)
            value, err = parse(c.text, c.finish_reason, c.refusal)
            if k >= len(res.choices):
                err = f"the provider returned {len(res.choices)} of {req.n} samples"
            slots.append(Outcome(value, err, 1, res.model))
        out.append(slots)
    for attempt in range(1, retries + 1):
        # one re-ask per request: n = its unusable slots, citing the first one's cause
        todo = [(i, [k for k, s in enumerate(slots) if s.error]) for i, slots in enumerate(out)]
        todo = [(i, ks) for i, ks in todo if ks]
        if not todo:
            break
        again = [retry_request(requests[i], out[i][ks[0]].error, len(ks), attempt, prompt_dir) for i, ks in todo]
        res2, u2 = run_calls(provider, again, cache=cache, desc=f"{desc} re-ask {attempt}")
        _add_usage(usage, u2)
        for (i, ks), res in zip(todo, res2):
            for j, k in enumerate(ks):
                c = res.choices[j] if j < len(res.choices) else Choice("", None)
                value, err = parse(c.text, c.finish_reason, c.refusal)
                if j >= len(res.choices):
                    err = f"the provider returned {len(res.choices)} of {len(ks)} samples"
                out[i][k] = Outcome(value, err, attempt + 1, res.model)
    return out, usage


# -- the judge record


@dataclass(frozen=True)
class JudgeRecord:
    """What every judgment row says about who judged and how."""

    judge: str
    primary: bool
    judge_model: str
    judge_version: str
    temperature: float
    max_tokens: int

    @classmethod
    def of(cls, provider, *, primary: bool, temperature: float, max_tokens: int) -> "JudgeRecord":
        return cls(provider.name, primary, provider.model, provider.identity(), temperature, max_tokens)

    def as_row(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def judgment_rows(responses: list[dict], outcomes: list[list[Outcome]], *, record: JudgeRecord, m: int,
                  prompt_dir: str = "prompts") -> list[dict]:
    sha = template_sha(TEMPLATE, prompt_dir)
    rows = []
    for r, slots in zip(responses, outcomes):
        for rep, o in enumerate(slots):
            rows.append({
                "answerer": r.get("service") or LOCAL, "prompt_id": r["prompt_id"], "task": r["task"],
                "sample": r["sample"], "repeat": rep, **record.as_row(), "served_model": o.served_model or None,
                "prompt_sha": sha, "m": m,
                "attempts": o.attempts, "ok": o.error is None,
                "precision": o.value["precision"] if o.value else None,
                "similarity": o.value["similarity"] if o.value else None,
                "reason": o.value["reason"] if o.value else None, "error": o.error,
            })
    return rows


def grade(provider, answers: list[dict], test_by_id: dict[str, dict], j, *, primary: bool, cache,
          prompt_dir: str = "prompts") -> tuple[list[dict], object]:
    """M judgments of every answer by one judge (an open provider); rows of the `judgments` table and Usage."""
    requests = build_requests(answers, test_by_id, m=j.m, temperature=j.temperature, max_tokens=j.max_tokens,
                              prompt_dir=prompt_dir)
    outcomes, usage = ask(provider, requests, parse_judgment, retries=j.retries, cache=cache,
                          desc=f"judge ({provider.name})", prompt_dir=prompt_dir)
    record = JudgeRecord.of(provider, primary=primary, temperature=j.temperature, max_tokens=j.max_tokens)
    return judgment_rows(answers, outcomes, record=record, m=j.m, prompt_dir=prompt_dir), usage


# -- pairwise: local answer against the service's, both orders

_SIDE = {("local_first", "A"): "local", ("local_first", "B"): "service",
         ("service_first", "A"): "service", ("service_first", "B"): "local"}


def side(order: str, winner: str) -> str:
    """The verdict as a model name: which answer won when it was shown in `order`."""
    return "tie" if winner == "tie" else _SIDE[(order, winner)]


def combine(local_first: str, service_first: str) -> tuple[str, bool]:
    """(outcome for the local model, flipped). A win needs both orders; a preference that flips with the
    order is a tie (the judge preferred a position, not an answer); one order's tie with the other's
    preference is a tie too (the conservative rule of Zheng et al.'s MT-Bench)."""
    flipped = {local_first, service_first} == {"local", "service"}
    if local_first == service_first == "local":
        return "win", False
    if local_first == service_first == "service":
        return "loss", False
    return "tie", flipped


def pairwise_rows(pairs: list[tuple[dict, dict]], outcomes: list[list[Outcome]], *, record: JudgeRecord,
                  prompt_dir: str = "prompts") -> list[dict]:
    """`pairs`: (local answer, service answer); `outcomes`: two per pair, local-first request then service-first."""
    sha = template_sha(PAIRWISE_TEMPLATE, prompt_dir)
    rows = []
    for i, (loc, svc) in enumerate(pairs):
        a, b = outcomes[2 * i][0], outcomes[2 * i + 1][0]
        row = {"prompt_id": loc["prompt_id"], "task": loc["task"], "sample": loc["sample"], "service": svc["service"],
               "service_sample": svc["sample"], **record.as_row(),
               "served_model": ",".join(sorted({o.served_model for o in (a, b) if o.served_model})) or None,
               "prompt_sha": sha, "attempts": a.attempts + b.attempts,
               "local_first": side("local_first", a.value["winner"]) if a.value else None,
               "service_first": side("service_first", b.value["winner"]) if b.value else None,
               "reason_local_first": a.value["reason"] if a.value else None,
               "reason_service_first": b.value["reason"] if b.value else None}
        errors = [f"{name}: {o.error}" for name, o in (("local first", a), ("service first", b)) if o.error]
        if errors:
            row.update(ok=False, outcome=None, flipped=None, error="; ".join(errors))
        else:
            outcome, flipped = combine(row["local_first"], row["service_first"])
            row.update(ok=True, outcome=outcome, flipped=flipped, error=None)
        rows.append(row)
    return rows


def compare(provider, responses: list[dict], service_answers: list[dict], test_by_id: dict[str, dict], j, *,
            primary: bool, cache, prompt_dir: str = "prompts") -> tuple[list[dict], object]:
    """Each local answer against the service's answer to the same prompt (sample s against the service's
    sample s mod its count), in both orders, by one judge; rows of the `pairwise` table and Usage."""
    by_prompt: dict[str, list[dict]] = {}
    for s in sorted(service_answers, key=lambda s: s["sample"]):
        by_prompt.setdefault(s["prompt_id"], []).append(s)
    pairs, requests = [], []
    for r in responses:
        theirs = by_prompt.get(r["prompt_id"])
        if not theirs:
            continue  # the service gave no answer to this prompt: nothing to compare with
        svc = theirs[r["sample"] % len(theirs)]
        ref = test_by_id[r["prompt_id"]]
        pairs.append((r, svc))
        for a, b in ((r["answer"], svc["answer"]), (svc["answer"], r["answer"])):
            requests.append(pairwise_request(ref["instruction"], ref["response"], a, b, temperature=j.temperature,
                                             max_tokens=j.max_tokens, prompt_dir=prompt_dir))
    outcomes, usage = ask(provider, requests, parse_verdict, retries=j.retries, cache=cache,
                          desc=f"pairwise ({provider.name})", prompt_dir=prompt_dir)
    record = JudgeRecord.of(provider, primary=primary, temperature=j.temperature, max_tokens=j.max_tokens)
    return pairwise_rows(pairs, outcomes, record=record, prompt_dir=prompt_dir), usage


# -- the stages' entry points


def _check_prompts(answers: list[dict], test_by_id: dict[str, dict], what: str) -> None:
    missing = {r["prompt_id"] for r in answers} - set(test_by_id)
    if missing:
        raise ValueError(f"{len(missing)} {what} refer to prompts not in the test split, e.g. {sorted(missing)[0]}")


def _usage_total(usages: dict[str, dict]) -> dict:
    total: dict = {}
    for u in usages.values():
        for k, v in u.items():
            total[k] = total.get(k, 0) + v
    if "cost_usd" in total:
        total["cost_usd"] = round(total["cost_usd"], 6)
    return total


def evaluate(*, responses: list[dict], test: list[dict], params, service_answers: list[dict] | None = None,
             prompt_dir: str = "prompts") -> tuple[list[dict], list[dict], dict]:
    """Judge every local answer M times by each judge of the panel and, when service answers are given,
    compare each local answer with the first service's, in both orders.

    Returns judgment rows, pairwise rows and per-judge usage (plus `total`).
    """
    from llamaduo.cache import CallCache
    from llamaduo.providers import get_provider

    j = params.judge
    test_by_id = {r["id"]: r for r in test}
    _check_prompts(responses, test_by_id, "answer(s)")
    service = j.services[0] if j.services else None
    opponents = [s for s in (service_answers or []) if s["service"] == service]
    _check_prompts(opponents, test_by_id, "service answer(s)")
    judgments, pairwise, usages = [], [], {}
    cache = CallCache(params.cache.path)
    try:
        for rank, name in enumerate(j.panel):
            provider = get_provider(name, params.providers[name])
            with provider:
                rows, usage = grade(provider, responses, test_by_id, j, primary=rank == 0, cache=cache,
                                    prompt_dir=prompt_dir)
                judgments += rows
                if j.pairwise and opponents:
                    prow, u2 = compare(provider, responses, opponents, test_by_id, j, primary=rank == 0, cache=cache,
                                       prompt_dir=prompt_dir)
                    pairwise += prow
                    _add_usage(usage, u2)
            usages[name] = usage.as_dict()
    finally:
        cache.close()
    return judgments, pairwise, usages | {"total": _usage_total(usages)}


@contextmanager
def open_providers(params, names: list[str]):
    """Each named provider built and entered once (a local judge that also answers starts one server, not two)."""
    from llamaduo.providers import get_provider

    with ExitStack() as stack:
        yield {n: stack.enter_context(get_provider(n, params.providers[n])) for n in dict.fromkeys(names)}


def answer_with_services(providers: dict, test: list[dict], params, *, cache) -> tuple[list[dict], dict]:
    """The baseline's answers: each service LLM answers each test prompt (`judge.baseline.samples` per call).
    Through the call engine, so a rerun pays nothing. Rows of the `baseline_responses` table, usage per service."""
    from llamaduo.calls import run_calls

    b = params.judge.baseline
    rows, usages = [], {}
    for name in params.judge.services:
        provider = providers[name]
        # the same single user turn the local model gets (inference.generate), so both answer the same question
        requests = [ChatRequest(messages=(("user", r["instruction"]),), temperature=b.temperature,
                                max_tokens=b.max_tokens, n=b.samples) for r in test]
        results, usage = run_calls(provider, requests, cache=cache, desc=f"baseline answers ({name})")
        for r, res in zip(test, results):
            for k, c in enumerate(res.choices):
                rows.append({"service": name, "service_model": provider.model, "served_model": res.model or None,
                             "prompt_id": r["id"], "task": r["task"],
                             "sample": k, "answer": c.text if c.text or not c.refusal else c.refusal,
                             "tokens": res.output_tokens // len(res.choices) if res.output_tokens else None,
                             "finish_reason": c.finish_reason})
        usages[name] = usage.as_dict()
    return rows, usages


def baseline(*, test: list[dict], params, prompt_dir: str = "prompts") -> tuple[list[dict], list[dict], dict, dict]:
    """The service baseline: answers from every service, judged exactly as the local ones (same panel, prompt,
    M and re-asks). Returns answers, judgment rows, answer usage and judge usage (per provider)."""
    from llamaduo.cache import CallCache

    j = params.judge
    test_by_id = {r["id"]: r for r in test}
    judgments, judge_usage = [], {}
    cache = CallCache(params.cache.path)
    try:
        with open_providers(params, j.services + j.panel) as providers:
            answers, answer_usage = answer_with_services(providers, test, params, cache=cache)
            for rank, name in enumerate(j.panel):
                rows, usage = grade(providers[name], answers, test_by_id, j, primary=rank == 0, cache=cache,
                                    prompt_dir=prompt_dir)
                judgments += rows
                judge_usage[name] = usage.as_dict()
    finally:
        cache.close()
    return answers, judgments, answer_usage, judge_usage
