"""The synthesize stage: request pairs from the service LLM until curation of them would reach `synth.volume`."""

from __future__ import annotations

import math
import sys

from llamaduo.synthesis.requests import Plan, parse_pairs, plan_requests


def _parse_into(rows: list[dict], index: int, plan: Plan, result, provider, stats: dict) -> None:
    if result.error is not None:
        # the call failed for good (e.g. HTTP 400): no pairs; counted by status (the vendor's text varies per
        # request), and not cached, so a later run asks again
        status = result.extra.get("status")
        reason = f"request failed: HTTP {status}" if status is not None else "request failed"
        stats["failed_requests"] = stats.get("failed_requests", 0) + 1
        stats["failure_reasons"][reason] = stats["failure_reasons"].get(reason, 0) + 1
        return
    j = 0
    for choice in result.choices:
        pairs, err = parse_pairs(choice.text if choice.finish_reason != "length" else "")
        if err is not None:
            reason = "truncated at max_tokens" if choice.finish_reason == "length" else err.split(" (")[0]
            stats["failed_answers"] += 1
            stats["failure_reasons"][reason] = stats["failure_reasons"].get(reason, 0) + 1
        for pair in pairs:
            # a new pair keeps its seed's system prompt (it was written for it) and is single-turn
            rows.append({"id": f"{plan.request_id}-{j}", "task": plan.seed["task"], **pair,
                         "system": plan.seed.get("system"), "history": None, "seed_id": plan.seed["id"],
                         "provider": provider.name, "model": provider.model, "request_id": plan.request_id,
                         "cycle": index})  # request index for now; replaced by the cycle once the prefix is known
            j += 1


def requests_needed(rows: list[dict], volume: int, *, train: list[dict], test: list[dict], curate_params) -> int | None:
    """How many requests (a prefix of the sequence) give `volume` curated pairs; None if these rows cannot.

    Curation judges each row against train and the rows kept before it, so the curated rows of a prefix of
    requests never change when more requests follow: counting on a prefix is exact, not an estimate."""
    from llamaduo.curation import curate  # numba kernels: imported only when there is something to curate

    if volume <= 0:
        return 0
    kept, _, _ = curate(rows, train=train, test=test, p=curate_params)  # rows carry their request index as `cycle`
    return kept[volume - 1]["cycle"] + 1 if len(kept) >= volume else None


def synthesize(*, train: list[dict], test: list[dict], provider, cache, synth, curate_params) -> tuple[list[dict], dict]:
    """Request pairs from `provider` (open; None will do when `synth.volume` is 0) through `cache` until curation
    of them with `curate_params` would reach `synth.volume`, or `synth.max_requests` is spent; say which.

    The requests are a fixed sequence (`plan_requests`), so a larger volume asks the same first requests
    again (answered by the call cache) and pays only for the new ones. A request's rows get the cycle in
    which it was first needed: the first cycle c whose target `synth.previous_volumes[c]` needed it, else
    `synth.cycle`. That follows from params alone, so the lineage is the same on any machine."""
    s = synth
    stats = {"volume": s.volume, "requests": 0, "requests_sent": 0, "pairs": 0, "curated": 0, "failed_answers": 0,
             "failed_requests": 0, "failure_reasons": {}, "stopped_by": "volume"}
    if s.volume == 0:
        stats["stopped_by"] = "volume is 0"
        return [], stats
    from llamaduo.curation import curate
    from llamaduo.providers.engine import run_calls
    from llamaduo.usage import Usage

    plans = plan_requests(train, n_requests=s.max_requests, pairs_per_request=s.pairs_per_request, topics=s.topics,
                          seed=s.seed, temperature=s.temperature, max_tokens=s.max_tokens)
    usage, rows, done = Usage(), [], 0

    def curated_so_far() -> int:
        return len(curate(rows, train=train, test=test, p=curate_params)[0])

    while done < len(plans):
        have = curated_so_far() if rows else 0
        if have >= s.volume:
            break
        # ask for what is missing at the curated yield seen so far (the full pair count at first)
        per_request = have / done if done and have else s.pairs_per_request
        want = math.ceil((s.volume - have) / max(per_request, 0.25))
        batch = plans[done:done + want]
        # keep_failed: one request the service refuses with its own error (a 400) gives no pairs, not a failed stage
        results, u = run_calls(provider, [pl.request for pl in batch], cache=cache, desc=f"synthesize ({provider.name})",
                               keep_failed=True)
        usage.add(u)
        for offset, (pl, res) in enumerate(zip(batch, results)):
            _parse_into(rows, done + offset, pl, res, provider, stats)
        done += len(batch)

    needed = requests_needed(rows, s.volume, train=train, test=test, curate_params=curate_params)
    used = needed if needed is not None else done
    # the cycle each request was first needed in: the first earlier target that needed it, else this cycle
    bounds = []
    for c, v in enumerate(s.previous_volumes):
        k = requests_needed(rows, v, train=train, test=test, curate_params=curate_params)
        bounds.append((min(k if k is not None else used, used), c))
    rows = [r for r in rows if r["cycle"] < used]
    for r in rows:
        r["cycle"] = next((c for k, c in bounds if r["cycle"] < k), s.cycle)
    curated = min(s.volume, curated_so_far()) if rows else 0
    stats.update(requests=used, requests_sent=done, pairs=len(rows), curated=curated, usage=usage.as_dict(),
                 requests_per_cycle={str(c): sum(1 for k in range(used) if next((cc for kk, cc in bounds if k < kk), s.cycle) == c)
                                     for c in sorted({cc for _, cc in bounds} | {s.cycle})},
                 stopped_by="volume" if needed is not None else "max_requests")
    if needed is None:
        msg = (f"synthesize: stopped by `synth.max_requests` ({s.max_requests}) with {curated} of {s.volume} curated pairs "
               f"({len(rows)} raw pairs from {done} requests)")
    else:
        msg = f"synthesize: reached `synth.volume` ({s.volume} curated pairs) with {used} requests ({done} sent, the rest cached for later)"
    print(msg, file=sys.stderr)
    return rows, stats
