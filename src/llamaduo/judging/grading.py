"""Grading by the judge panel.

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

from dataclasses import dataclass, fields
from functools import partial

from llamaduo.errors import DataError
from llamaduo.judging.names import LOCAL
from llamaduo.judging.protocol import (
    PAIRWISE_TEMPLATE,
    TEMPLATE,
    build_requests,
    context_text,
    pairwise_request,
    parse_judgment,
    parse_verdict,
    prompt_sha,
    retry_request,
)
from llamaduo.providers.engine import Outcome, ask
from llamaduo.usage import total

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
    def of(cls, provider, *, primary: bool, temperature: float, max_tokens: int) -> JudgeRecord:
        return cls(provider.name, primary, provider.model, provider.identity(), temperature, max_tokens)

    def as_row(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def judgment_rows(responses: list[dict], outcomes: list[list[Outcome]], *, record: JudgeRecord, m: int,
                  prompt_dir: str = "prompts") -> list[dict]:
    sha = prompt_sha(TEMPLATE, prompt_dir)
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
                          reask=partial(retry_request, prompt_dir=prompt_dir), desc=f"judge ({provider.name})")
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
    sha = prompt_sha(PAIRWISE_TEMPLATE, prompt_dir)
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
        context = context_text(ref)
        for a, b in ((r["answer"], svc["answer"]), (svc["answer"], r["answer"])):
            requests.append(pairwise_request(ref["instruction"], ref["response"], a, b, temperature=j.temperature,
                                             max_tokens=j.max_tokens, prompt_dir=prompt_dir, context=context))
    outcomes, usage = ask(provider, requests, parse_verdict, retries=j.retries, cache=cache,
                          reask=partial(retry_request, prompt_dir=prompt_dir), desc=f"pairwise ({provider.name})")
    record = JudgeRecord.of(provider, primary=primary, temperature=j.temperature, max_tokens=j.max_tokens)
    return pairwise_rows(pairs, outcomes, record=record, prompt_dir=prompt_dir), usage


# -- the stages' entry points


def _check_prompts(answers: list[dict], test_by_id: dict[str, dict], what: str) -> None:
    missing = {r["prompt_id"] for r in answers} - set(test_by_id)
    if missing:
        raise DataError(f"{len(missing)} {what} refer to prompts not in the test split, e.g. {sorted(missing)[0]}")


def evaluate(*, responses: list[dict], test: list[dict], judges: dict, j, cache, service_answers: list[dict] | None = None,
             prompt_dir: str = "prompts") -> tuple[list[dict], list[dict], dict]:
    """Judge every local answer M times by each judge of the panel `j.panel` (open providers in `judges`, by name)
    and, when service answers are given, compare each local answer with the first service's, in both orders.

    Returns judgment rows, pairwise rows and per-judge usage (plus `total`).
    """
    test_by_id = {r["id"]: r for r in test}
    _check_prompts(responses, test_by_id, "answer(s)")
    service = j.services[0] if j.services else None
    opponents = [s for s in (service_answers or []) if s["service"] == service]
    _check_prompts(opponents, test_by_id, "service answer(s)")
    judgments, pairwise, usages = [], [], {}
    for rank, name in enumerate(j.panel):
        provider = judges[name]
        rows, usage = grade(provider, responses, test_by_id, j, primary=rank == 0, cache=cache, prompt_dir=prompt_dir)
        judgments += rows
        if j.pairwise and opponents:
            prow, u2 = compare(provider, responses, opponents, test_by_id, j, primary=rank == 0, cache=cache,
                               prompt_dir=prompt_dir)
            pairwise += prow
            usage.add(u2)
        usages[name] = usage.as_dict()
    return judgments, pairwise, usages | {"total": total(usages.values())}
