"""The call engine shared by every provider: the cache in front, bounded concurrency, pacing, retries,
the Batch API driver, and usage (tokens and cost) counted.

One engine for all providers (the SDKs' own retries are off) so that retry, pacing and caching behave the
same whichever vendor answers, and are tested once.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

from tqdm import tqdm

from llamaduo.errors import ProviderError
from llamaduo.providers.base import ChatRequest, ChatResult, Choice, Provider
from llamaduo.providers.cache import BatchJob, CallCache, call_key
from llamaduo.providers.limits import Pacer, backoff_delay


@dataclass
class Usage:
    # every field is a number, so stages can add up the Usage of several runs field by field
    calls: int = 0          # API calls answered (paid); n samples sent as n calls count n
    cached: int = 0         # calls answered from the cache
    failed: int = 0
    retries: int = 0        # attempts repeated after a retryable error (429, 5xx, timeout, dropped connection)
    batch_calls: int = 0    # of `calls`, answered through the Batch API
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0   # of the paid calls, from `providers.<name>.price`

    def add(self, other: Usage) -> Usage:
        """Add `other` field by field, in place (the calls of several runs of one stage)."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def as_dict(self) -> dict:
        return dict(self.__dict__, cost_usd=round(self.cost_usd, 6))


def total(usages) -> dict:
    """Usage dicts (`as_dict()`, or the `usage` entries of metrics files) added up field by field."""
    out: dict = {}
    for u in usages:
        for k, v in u.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
    if "cost_usd" in out:
        out["cost_usd"] = round(out["cost_usd"], 6)
    return out


@dataclass
class _Unit:
    """One API call: a whole request, or one sample of it when the provider has no native n."""

    index: int
    sample: int | None
    request: ChatRequest
    key: str


def run_calls(provider: Provider, requests: list[ChatRequest], *, cache: CallCache, desc: str,
              progress: bool = True) -> tuple[list[ChatResult], Usage]:
    """Answer every request (cache first, then the provider), in order.

    Each answer is cached the moment it arrives. If any request fails for good, the others still finish
    (and are cached), then ProviderError reports how many failed and the first cause. An error that no
    request can get past (bad key, no access, unknown model) stops new calls at once.
    """
    return asyncio.run(_Run(provider, cache, desc, progress).run(requests))


def split(provider: Provider, requests: list[ChatRequest]) -> list[_Unit]:
    identity = provider.identity()
    units = []
    for i, req in enumerate(requests):
        if req.n == 1 or provider.native_n:
            units.append(_Unit(i, None, req, call_key(identity, req)))
        else:  # M samples = M calls, each its own cache entry
            one = replace(req, n=1)
            units.extend(_Unit(i, s, one, call_key(identity, one, s)) for s in range(req.n))
    return units


class _Run:
    def __init__(self, provider: Provider, cache: CallCache, desc: str, progress: bool):
        p = provider.params
        self.provider, self.cache, self.desc, self.p = provider, cache, desc, p
        self.identity = provider.identity()
        self.usage = Usage()
        self.pacer = Pacer(p.rpm, p.tpm)
        self.abort: ProviderError | None = None  # set by a fatal error: no new calls
        self.errors: list[ProviderError] = []
        self.answers: dict[str, ChatResult] = {}
        self.progress = progress
        self.bar = None

    async def run(self, requests: list[ChatRequest]) -> tuple[list[ChatResult], Usage]:
        units = split(self.provider, requests)
        todo: dict[str, list[_Unit]] = {}  # identical calls are sent once
        for u in units:
            if u.key in todo:
                todo[u.key].append(u)
                continue
            if u.key in self.answers:
                self.usage.cached += 1
                continue
            hit = self.cache.get(u.key)
            if hit is not None:
                self.answers[u.key] = hit
                self.usage.cached += 1
            else:
                todo[u.key] = [u]
        self.bar = tqdm(total=len(units), initial=self.usage.cached, desc=self.desc, unit="call", file=sys.stderr,
                        mininterval=2, dynamic_ncols=True, disable=not self.progress)
        try:
            if todo:
                if self.p.batch:
                    await self._batch(todo)
                else:
                    await self._online(todo)
        finally:
            self.bar.close()
            await self.provider.aclose()
        if self.errors:
            u = self.usage
            raise ProviderError(f"{u.failed} of {len(units)} {self.desc} call(s) failed ({u.calls} answered and cached, "
                                f"so a rerun pays only for the failed ones); first cause: {self.errors[0]}")
        return [self._merge([u for u in units if u.index == i]) for i in range(len(requests))], self.usage

    def _merge(self, units: list[_Unit]) -> ChatResult:
        parts = [self.answers[u.key] for u in units]
        if len(parts) == 1:
            return parts[0]
        return ChatResult([c for r in parts for c in r.choices], sum(r.input_tokens for r in parts),
                          sum(r.output_tokens for r in parts), cached=all(r.cached for r in parts),
                          model=",".join(sorted({r.model for r in parts if r.model})))

    # -- bookkeeping, shared by both paths

    def _answered(self, key: str, result: ChatResult, n_units: int, *, batch: bool = False) -> None:
        self.cache.put(key, self.identity, result)  # first: a kill after this line loses nothing
        self.answers[key] = result
        price = self.p.price
        factor = price.batch_factor if batch else 1.0
        u = self.usage
        u.calls += 1
        u.cached += n_units - 1  # duplicates of this call in the same run
        u.batch_calls += int(batch)
        u.input_tokens += result.input_tokens
        u.output_tokens += result.output_tokens
        u.cost_usd += factor * (result.input_tokens * price.input_per_mtok + result.output_tokens * price.output_per_mtok) / 1e6
        self.bar.update(n_units)
        self.bar.set_postfix(paid=u.calls, cached=u.cached, retries=u.retries, tok_out=u.output_tokens, refresh=False)

    def _failed(self, err: ProviderError, n_units: int) -> None:
        self.usage.failed += n_units
        self.errors.append(err)
        if err.fatal and self.abort is None:
            self.abort = err

    async def _attempt(self, fn, *, tokens: int = 0, what: str = "call"):
        """Run `fn()` with pacing, a timeout and our retry policy; raise the last ProviderError."""
        p = self.p
        for attempt in range(p.max_retries + 1):
            if self.abort is not None:
                raise ProviderError(f"not sent: {self.abort}", fatal=True)
            await self.pacer.acquire(tokens)
            try:
                return await asyncio.wait_for(fn(), p.timeout_s)
            except TimeoutError:
                err = self.provider.error(f"no answer to the {what} within {p.timeout_s:g} s "
                                          f"(`providers.{self.provider.name}.timeout_s`)", retryable=True)
            except ProviderError as exc:
                err = exc
            if err.fatal or not err.retryable or attempt == p.max_retries:
                if err.retryable and attempt == p.max_retries and p.max_retries:
                    err = ProviderError(f"{err} (gave up after {p.max_retries} retries)", status=err.status)
                raise err
            self.usage.retries += 1
            delay = backoff_delay(attempt, base=p.retry_base_s, cap=p.retry_max_s, retry_after=err.retry_after)
            if err.retry_after is not None:
                self.pacer.pause(delay)  # the server's limit is shared: everyone waits
            await asyncio.sleep(delay)

    # -- the online path: one call per unit

    async def _online(self, todo: dict[str, list[_Unit]]) -> None:
        try:
            await self.provider.ensure_ready()  # e.g. start the local server: only now that something is missing
        except ProviderError as exc:
            exc.fatal = True
            self._failed(exc, sum(len(v) for v in todo.values()))
            return
        sem = asyncio.Semaphore(self.p.concurrency)

        async def one(key: str, units: list[_Unit]):
            req = units[0].request
            async with sem:
                try:
                    res = await self._attempt(lambda: self.provider.chat(req), tokens=req.estimated_tokens())
                except ProviderError as exc:
                    self._failed(exc, len(units))
                    return
            self._answered(key, res, len(units))

        await asyncio.gather(*(one(k, v) for k, v in todo.items()))
        self.errors.sort(key=lambda e: str(e).startswith("not sent"))  # report the cause, not the skips

    # -- the Batch API path: submit what no recorded job covers, poll every job, collect into the cache

    async def _batch(self, todo: dict[str, list[_Unit]]) -> None:
        prov, p = self.provider, self.p
        jobs = [j for j in self.cache.pending_batches(self.identity) if not todo.keys().isdisjoint(j.keys)]
        covered = {k for j in jobs for k in j.keys}
        fresh = [k for k in todo if k not in covered]
        if jobs:
            print(f"[{prov.name}] resuming {len(jobs)} batch job(s) recorded in {self.cache.path}", file=sys.stderr)
        for start in range(0, len(fresh), p.batch_max_requests):
            keys = fresh[start:start + p.batch_max_requests]
            items = [(k, todo[k][0].request) for k in keys]
            try:
                job_id = await self._attempt(lambda items=items: prov.batch_submit(items), what="batch submission")
            except ProviderError as exc:
                self._failed(exc, sum(len(todo[k]) for k in keys))
                continue
            self.cache.add_batch(job_id, self.identity, keys)  # at once: from now on a restart resumes, never resubmits
            jobs.append(BatchJob(job_id, self.identity, tuple(keys), time.time()))
            print(f"[{prov.name}] submitted batch {job_id} ({len(keys)} calls)", file=sys.stderr)
        deadline = time.monotonic() + p.batch_wait_s
        pending = list(jobs)
        while pending:
            for job in list(pending):
                try:
                    status = await self._attempt(lambda job=job: prov.batch_status(job.job_id), what="batch status poll")
                    if not status.done:
                        continue
                    results = await self._attempt(lambda job=job: prov.batch_results(job.job_id), what="batch results download")
                except ProviderError as exc:
                    self._failed(exc, sum(len(todo.get(k, ())) for k in job.keys))
                    pending.remove(job)
                    continue
                self._collect(job, status, results, todo)
                pending.remove(job)
            if pending:
                if time.monotonic() > deadline:
                    ids = ", ".join(j.job_id for j in pending)
                    err = prov.error(f"batch job(s) {ids} still running after {p.batch_wait_s:g} s "
                                     f"(`providers.{prov.name}.batch_wait_s`); they stay recorded: rerun to resume", retryable=False)
                    self._failed(err, sum(len(todo.get(k, ())) for j in pending for k in j.keys))
                    return
                await asyncio.sleep(p.batch_poll_s)

    def _collect(self, job: BatchJob, status, results: dict, todo: dict[str, list[_Unit]]) -> None:
        for key in job.keys:
            res = results.get(key)
            if isinstance(res, ChatResult):
                if key in self.answers:
                    continue
                if key in todo:
                    self._answered(key, res, len(todo[key]), batch=True)
                else:  # asked for by an earlier run with other params: keep it for when it is asked again
                    self.cache.put(key, self.identity, res)
            elif key in todo:
                err = res if isinstance(res, ProviderError) else self.provider.error(
                    f"batch {job.job_id} ({status.state}) has no result for this call" + (f": {status.error}" if status.error else ""),
                    retryable=False)
                self._failed(err, len(todo[key]))
        self.cache.finish_batch(job.job_id, status.state)


# -- answers that must parse: re-ask the unusable ones, saying why


@dataclass
class Outcome:
    """One sample slot (request i, sample k) after the re-asks: the parsed value, or why it stayed unusable."""

    value: dict | None
    error: str | None
    attempts: int
    served_model: str = ""  # what the service said answered the call that gave this slot


Parse = Callable[[str, str | None, str | None], tuple[dict | None, str | None]]
Reask = Callable[[ChatRequest, str, int, int], ChatRequest]


def _outcomes(result: ChatResult, n: int, parse: Parse, attempt: int) -> list[Outcome]:
    out = []
    for k in range(n):
        c = result.choices[k] if k < len(result.choices) else Choice("", None)
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
    request (one per sample) and the Usage of every call, re-asks included."""
    results, usage = run_calls(provider, requests, cache=cache, desc=desc)
    out = [_outcomes(res, req.n, parse, 1) for req, res in zip(requests, results)]
    for attempt in range(1, retries + 1):
        # one re-ask per request: n = its unusable slots, citing the first one's cause
        todo = [(i, [k for k, s in enumerate(slots) if s.error]) for i, slots in enumerate(out)]
        todo = [(i, ks) for i, ks in todo if ks]
        if not todo:
            break
        again = [reask(requests[i], out[i][ks[0]].error, len(ks), attempt) for i, ks in todo]
        results, more = run_calls(provider, again, cache=cache, desc=f"{desc} re-ask {attempt}")
        usage.add(more)
        for (i, ks), res in zip(todo, results):
            for k, o in zip(ks, _outcomes(res, len(ks), parse, attempt + 1)):
                out[i][k] = o
    return out, usage
