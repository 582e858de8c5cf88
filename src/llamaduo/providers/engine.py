"""The call engine every provider goes through: `run_calls` answers requests from the cache first, then from
the provider, online (bounded concurrency) or through the Batch API (`batch.py`); `ask` re-asks the answers
that do not parse, saying why.

One engine for all providers (the SDKs' own retries are off) so that retry, pacing and caching behave the
same whichever vendor answers, and are tested once.

A budget on the cache (`CallCache.budget`, the loop's `loop.max_cost_usd`) is held before each call is sent: the
most the call can cost (its prompt and `max_tokens`) is reserved, and a call that could cross the budget is not
sent; the stage stops with every answer paid so far cached.

Nothing is paid twice, whatever runs beside it or crashes: an online call is claimed in the cache before it is
sent (another process missing the same key waits for the answer), each answer is stored with its cost the
moment it arrives, and Batch API submissions and jobs are recorded in the cache DB (`batch.py`).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace

from tqdm import tqdm

from llamaduo.errors import ProviderError
from llamaduo.providers.base import ChatRequest, ChatResult, Choice, Provider
from llamaduo.providers.batch import BatchDriver
from llamaduo.providers.cache import CallCache, call_key
from llamaduo.providers.calls import Ledger, Sender, Unit
from llamaduo.usage import Usage, cost_bound


def run_calls(provider: Provider, requests: list[ChatRequest], *, cache: CallCache, desc: str,
              progress: bool = True, keep_failed: bool = False) -> tuple[list[ChatResult], Usage]:
    """Answer every request (cache first, then the provider), in order.

    Each answer is cached the moment it arrives. A request that fails for good with an error that only it
    has (a 400: e.g. a prompt longer than the model's context) is, with `keep_failed`, returned as a
    ChatResult whose `error` says why (choices are placeholders with finish_reason "error"), so the stage
    goes on; without it, ProviderError is raised once the others have finished. Errors that would pass on a
    later run (retries exhausted on 429/5xx/timeouts, a batch still running) or that no request can get past
    (bad key, no access, unknown model, wrong path: new calls stop at once) always raise ProviderError, after
    every answer already paid is cached. Failed calls are never cached: a rerun asks them again.
    """
    return asyncio.run(_Run(provider, cache, desc, progress).run(requests, keep_failed=keep_failed))


def split(provider: Provider, requests: list[ChatRequest]) -> list[Unit]:
    identity = provider.identity()
    units = []
    for i, req in enumerate(requests):
        if req.n == 1 or provider.native_n:
            units.append(Unit(i, None, req, call_key(identity, req)))
        else:  # M samples = M calls, each its own cache entry
            one = replace(req, n=1)
            units.extend(Unit(i, s, one, call_key(identity, one, s)) for s in range(req.n))
    return units


def _stops_the_stage(err: ProviderError) -> bool:
    """Whether a failed call must fail the stage rather than become a failed row: a fatal error (no request
    can pass), or a retryable one (429/5xx/timeout after every retry, a batch not finished: a rerun may
    succeed, so no output may record it as this request's answer)."""
    return err.fatal or err.retryable


class _Run:
    # how often a process waiting for another one's in-flight call looks for the answer
    claim_poll_s = 0.1

    def __init__(self, provider: Provider, cache: CallCache, desc: str, progress: bool):
        self.provider, self.cache, self.desc, self.progress = provider, cache, desc, progress
        self.p = provider.params
        self.ledger = Ledger(cache, provider.identity(), self.p.price)
        self.sender = Sender(provider, self.ledger)

    async def run(self, requests: list[ChatRequest], *, keep_failed: bool = False) -> tuple[list[ChatResult], Usage]:
        ledger = self.ledger
        units = split(self.provider, requests)
        todo = ledger.todo  # identical calls are sent once
        for u in units:
            if u.key in todo:
                todo[u.key].append(u)
                continue
            if u.key in ledger.answers:
                ledger.usage.cached += 1
                ledger.count_tokens(ledger.answers[u.key], 1)
                continue
            hit = self.cache.get(u.key)
            if hit is not None:
                ledger.answers[u.key] = hit
                ledger.usage.cached += 1
                ledger.count_tokens(hit, 1)
            else:
                todo[u.key] = [u]
        ledger.bar = tqdm(total=len(units), initial=ledger.usage.cached, desc=self.desc, unit="call", file=sys.stderr,
                          mininterval=2, dynamic_ncols=True, disable=not self.progress)
        try:
            if todo:
                if self.p.batch:
                    await BatchDriver(self.provider, ledger, self.sender).run()
                else:
                    await self._online(todo)
            for key, us in todo.items():  # answered by another process sharing the cache while this one waited
                if key not in ledger.answers and key not in ledger.failures:
                    hit = self.cache.get(key)
                    if hit is None:
                        raise AssertionError(f"call {key} was neither answered nor failed")  # a bug, not a user error
                    ledger.from_cache(key, hit, len(us))
        finally:
            ledger.bar.close()
            self.cache.release()  # claims of calls not sent (a fatal error, an interrupt): others may take them
            await self.provider.aclose()
        if ledger.errors:
            u = ledger.usage
            stop = [e for e in ledger.errors if _stops_the_stage(e)]
            if stop or not keep_failed:
                first = (stop or ledger.errors)[0]
                raise ProviderError(f"{u.failed} of {len(units)} {self.desc} call(s) failed ({u.calls} answered and cached, "
                                    f"so a rerun pays only for the failed ones); first cause: {first}",
                                    status=first.status, fatal=first.fatal)
            print(f"[{self.provider.name}] {u.failed} of {len(units)} {self.desc} call(s) failed for good and are "
                  f"returned as failed (not cached); first cause: {ledger.errors[0]}", file=sys.stderr)
        return [self._merge([u for u in units if u.index == i]) for i in range(len(requests))], ledger.usage

    def _merge(self, units: list[Unit]) -> ChatResult:
        answers = self.ledger.answers
        parts = [answers[u.key] if u.key in answers else self._failed_result(u) for u in units]
        if len(parts) == 1:
            return parts[0]
        return ChatResult([c for r in parts for c in r.choices], sum(r.input_tokens for r in parts),
                          sum(r.output_tokens for r in parts), cached=all(r.cached for r in parts),
                          model=",".join(sorted({r.model for r in parts if r.model})),
                          error=next((r.error for r in parts if r.error), None),
                          extra=next((r.extra for r in parts if r.error), {}))

    def _failed_result(self, unit: Unit) -> ChatResult:
        err = self.ledger.failures[unit.key]
        return ChatResult([Choice("", "error") for _ in range(unit.request.n)], error=str(err),
                          extra={"status": err.status})

    # -- the online path: one call per unit

    async def _online(self, todo: dict[str, list[Unit]]) -> None:
        ledger, sender = self.ledger, self.sender
        try:
            await self.provider.ensure_ready()  # e.g. start the local server: only now that something is missing
        except ProviderError as exc:
            exc.fatal = True
            ledger.failed(exc, list(todo))
            return
        sem = asyncio.Semaphore(self.p.concurrency)

        async def one(key: str, units: list[Unit]):
            req = units[0].request
            while True:
                async with sem:  # claimed only when about to send: processes sharing the cache share the work
                    if ledger.abort is not None:
                        ledger.failed(ProviderError(f"not sent: {ledger.abort}", fatal=True), [key])
                        return
                    state = self.cache.claim(key, sender.stale_s)
                    if state == "answered":
                        ledger.from_cache(key, self.cache.get(key), len(units))
                        return
                    if state == "claimed":
                        over = ledger.reserve({key: cost_bound(self.p.price, req, batch=False)})
                        if over is not None:  # stop before the call that could cross the budget
                            self.cache.release(key)
                            ledger.failed(over, [key])
                            return
                        try:
                            res = await sender.attempt(lambda: self.provider.chat(req), tokens=req.estimated_tokens())
                        except ProviderError as exc:
                            self.cache.release(key)  # failed: another process may try it
                            ledger.failed(exc, [key])
                            return
                        ledger.answered(key, res, len(units))
                        return
                # "busy": another process is paying for this call right now; its answer will be in the cache
                await asyncio.sleep(self.claim_poll_s)

        await asyncio.gather(*(one(k, v) for k, v in todo.items()))
        ledger.errors.sort(key=lambda e: str(e).startswith("not sent"))  # report the cause, not the skips


# -- answers that must parse: re-ask the unusable ones, saying why


@dataclass
class Outcome:
    """One sample slot (request i, sample k) after the re-asks: the parsed value, or why it stayed unusable."""

    value: dict | None
    error: str | None
    attempts: int
    served_model: str = ""  # what the service said answered the call that gave this slot
    call_failed: bool = False  # the call itself failed (e.g. HTTP 400): `error` is the provider's reason, never re-asked


Parse = Callable[[str, str | None, str | None], tuple[dict | None, str | None]]
Reask = Callable[[ChatRequest, str, int, int], ChatRequest]


def _outcomes(result: ChatResult, n: int, parse: Parse, attempt: int) -> list[Outcome]:
    out = []
    for k in range(n):
        c = result.choices[k] if k < len(result.choices) else Choice("", None)
        if result.error is not None and c.finish_reason == "error":
            out.append(Outcome(None, f"request failed: {result.error}", attempt, result.model, call_failed=True))
            continue
        value, err = parse(c.text, c.finish_reason, c.refusal)
        if k >= len(result.choices):
            err = f"the provider returned {len(result.choices)} of {n} samples"
        out.append(Outcome(value, err, attempt, result.model))
    return out


def ask(provider: Provider, requests: list[ChatRequest], parse: Parse, *, retries: int, reask: Reask, cache: CallCache,
        desc: str) -> tuple[list[list[Outcome]], Usage]:
    """Send `requests`, parse every sample, and re-ask the unusable ones up to `retries` times.

    `parse(text, finish_reason, refusal)` gives (value, None) or (None, why it is unusable); `reask(request,
    cause, n, attempt)` builds the question asked again for n samples. Returns one list of Outcomes per
    request (one per sample) and the Usage of every call, re-asks included. A call that failed for good with
    its own error (a 400: e.g. a prompt longer than the judge's context) gives failed Outcomes (`call_failed`,
    `error` = the provider's reason with its status) and is not re-asked (the same prompt would fail again);
    errors that stop the stage raise ProviderError (see `run_calls`)."""
    results, usage = run_calls(provider, requests, cache=cache, desc=desc, keep_failed=True)
    out = [_outcomes(res, req.n, parse, 1) for req, res in zip(requests, results)]
    for attempt in range(1, retries + 1):
        # one re-ask per request: n = its unusable slots, citing the first one's cause
        todo = [(i, [k for k, s in enumerate(slots) if s.error and not s.call_failed]) for i, slots in enumerate(out)]
        todo = [(i, ks) for i, ks in todo if ks]
        if not todo:
            break
        again = [reask(requests[i], out[i][ks[0]].error, len(ks), attempt) for i, ks in todo]
        results, more = run_calls(provider, again, cache=cache, desc=f"{desc} re-ask {attempt}", keep_failed=True)
        usage.add(more)
        for (i, ks), res in zip(todo, results):
            for k, o in zip(ks, _outcomes(res, len(ks), parse, attempt + 1)):
                out[i][k] = o
    return out, usage
