"""The call engine shared by every provider: the cache in front, bounded concurrency, pacing, retries,
the Batch API driver, and usage (tokens and cost) counted.

One engine for all providers (the SDKs' own retries are off) so that retry, pacing and caching behave the
same whichever vendor answers, and are tested once.

Nothing is paid twice, whatever runs beside it or crashes: a call is claimed in the cache before it is sent
(another process missing the same key waits for the answer), each answer is stored with its cost the moment
it arrives, and a Batch API submission is recorded with an idempotency tag before it is sent, so one whose
answer never came back is looked up at the vendor instead of submitted again.
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
from llamaduo.providers.cache import BatchJob, CallCache, Submission, call_key
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


def _stops_the_stage(err: ProviderError) -> bool:
    """Whether a failed call must fail the stage rather than become a failed row: a fatal error (no request
    can pass), or a retryable one (429/5xx/timeout after every retry, a batch not finished: a rerun may
    succeed, so no output may record it as this request's answer)."""
    return err.fatal or err.retryable


class _Run:
    # how often a process waiting for another one's in-flight call looks for the answer
    claim_poll_s = 0.1

    def __init__(self, provider: Provider, cache: CallCache, desc: str, progress: bool):
        p = provider.params
        self.provider, self.cache, self.desc, self.p = provider, cache, desc, p
        self.identity = provider.identity()
        self.usage = Usage()
        self.pacer = Pacer(p.rpm, p.tpm)
        self.abort: ProviderError | None = None  # set by a fatal error: no new calls
        self.errors: list[ProviderError] = []
        self.failures: dict[str, ProviderError] = {}  # per call key: why it failed for good
        self.answers: dict[str, ChatResult] = {}
        self.todo: dict[str, list[_Unit]] = {}
        self.progress = progress
        self.bar = None
        # how long a claim (or a batch submission) of another process is trusted to still be in flight: the
        # longest that process can spend on one call with every retry and backoff, plus slack
        self.stale_s = p.timeout_s * (p.max_retries + 1) + p.max_retries * max(p.retry_max_s, p.retry_after_max_s) + 60

    async def run(self, requests: list[ChatRequest], *, keep_failed: bool = False) -> tuple[list[ChatResult], Usage]:
        units = split(self.provider, requests)
        todo = self.todo  # identical calls are sent once
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
            for key, us in todo.items():  # answered by another process sharing the cache while this one waited
                if key not in self.answers and key not in self.failures:
                    hit = self.cache.get(key)
                    if hit is None:
                        raise AssertionError(f"call {key} was neither answered nor failed")  # a bug, not a user error
                    self._from_cache(key, hit, len(us))
        finally:
            self.bar.close()
            self.cache.release()  # claims of calls not sent (a fatal error, an interrupt): others may take them
            await self.provider.aclose()
        if self.errors:
            u = self.usage
            stop = [e for e in self.errors if _stops_the_stage(e)]
            if stop or not keep_failed:
                first = (stop or self.errors)[0]
                raise ProviderError(f"{u.failed} of {len(units)} {self.desc} call(s) failed ({u.calls} answered and cached, "
                                    f"so a rerun pays only for the failed ones); first cause: {first}",
                                    status=first.status, fatal=first.fatal)
            print(f"[{self.provider.name}] {u.failed} of {len(units)} {self.desc} call(s) failed for good and are "
                  f"returned as failed (not cached); first cause: {self.errors[0]}", file=sys.stderr)
        return [self._merge([u for u in units if u.index == i]) for i in range(len(requests))], self.usage

    def _merge(self, units: list[_Unit]) -> ChatResult:
        parts = [self.answers[u.key] if u.key in self.answers else self._failed_result(u) for u in units]
        if len(parts) == 1:
            return parts[0]
        return ChatResult([c for r in parts for c in r.choices], sum(r.input_tokens for r in parts),
                          sum(r.output_tokens for r in parts), cached=all(r.cached for r in parts),
                          model=",".join(sorted({r.model for r in parts if r.model})),
                          error=next((r.error for r in parts if r.error), None),
                          extra=next((r.extra for r in parts if r.error), {}))

    def _failed_result(self, unit: _Unit) -> ChatResult:
        err = self.failures[unit.key]
        return ChatResult([Choice("", "error") for _ in range(unit.request.n)], error=str(err),
                          extra={"status": err.status})

    # -- bookkeeping, shared by both paths

    def _cost(self, result: ChatResult, batch: bool) -> float:
        price = self.p.price
        factor = price.batch_factor if batch else 1.0
        return factor * (result.input_tokens * price.input_per_mtok + result.output_tokens * price.output_per_mtok) / 1e6

    def _answered(self, key: str, result: ChatResult, n_units: int, *, batch: bool = False) -> None:
        cost = self._cost(result, batch)
        self.cache.put(key, self.identity, result, cost_usd=cost)  # first: a kill after this line loses nothing
        self.answers[key] = result
        u = self.usage
        u.calls += 1
        u.cached += n_units - 1  # duplicates of this call in the same run
        u.batch_calls += int(batch)
        u.input_tokens += result.input_tokens
        u.output_tokens += result.output_tokens
        u.cost_usd += cost
        self.bar.update(n_units)
        self.bar.set_postfix(paid=u.calls, cached=u.cached, retries=u.retries, tok_out=u.output_tokens, refresh=False)

    def _from_cache(self, key: str, result: ChatResult, n_units: int) -> None:
        """Answered meanwhile by another process sharing the cache: free for this run."""
        self.answers[key] = result
        self.usage.cached += n_units
        self.bar.update(n_units)

    def _failed(self, err: ProviderError, keys) -> None:
        for key in keys:
            if key in self.todo and key not in self.answers and key not in self.failures:
                self.failures[key] = err
                self.usage.failed += len(self.todo[key])
        self.errors.append(err)
        if err.fatal and self.abort is None:
            self.abort = err

    async def _attempt(self, fn, *, tokens: int = 0, what: str = "call", retry: bool = True):
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
            if not retry or err.fatal or not err.retryable or attempt == p.max_retries:
                if retry and err.retryable and attempt == p.max_retries and p.max_retries:
                    err = ProviderError(f"{err} (gave up after {p.max_retries} retries)", status=err.status, retryable=True)
                raise err
            await self._backoff(attempt, err)

    async def _backoff(self, attempt: int, err: ProviderError) -> None:
        p = self.p
        self.usage.retries += 1
        delay = backoff_delay(attempt, base=p.retry_base_s, cap=p.retry_max_s, retry_after=err.retry_after,
                              retry_after_cap=p.retry_after_max_s)
        if err.retry_after is not None:
            self.pacer.pause(delay)  # the server's limit is shared: everyone waits
        await asyncio.sleep(delay)

    # -- the online path: one call per unit

    async def _online(self, todo: dict[str, list[_Unit]]) -> None:
        try:
            await self.provider.ensure_ready()  # e.g. start the local server: only now that something is missing
        except ProviderError as exc:
            exc.fatal = True
            self._failed(exc, list(todo))
            return
        sem = asyncio.Semaphore(self.p.concurrency)

        async def one(key: str, units: list[_Unit]):
            req = units[0].request
            while True:
                async with sem:  # claimed only when about to send: processes sharing the cache share the work
                    if self.abort is not None:
                        self._failed(ProviderError(f"not sent: {self.abort}", fatal=True), [key])
                        return
                    state = self.cache.claim(key, self.stale_s)
                    if state == "answered":
                        self._from_cache(key, self.cache.get(key), len(units))
                        return
                    if state == "claimed":
                        try:
                            res = await self._attempt(lambda: self.provider.chat(req), tokens=req.estimated_tokens())
                        except ProviderError as exc:
                            self.cache.release(key)  # failed: another process may try it
                            self._failed(exc, [key])
                            return
                        self._answered(key, res, len(units))
                        return
                # "busy": another process is paying for this call right now; its answer will be in the cache
                await asyncio.sleep(self.claim_poll_s)

        await asyncio.gather(*(one(k, v) for k, v in todo.items()))
        self.errors.sort(key=lambda e: str(e).startswith("not sent"))  # report the cause, not the skips

    # -- the Batch API path: submit what no recorded job covers, poll every job, collect into the cache

    async def _batch(self, todo: dict[str, list[_Unit]]) -> None:
        prov, p = self.provider, self.p
        wanted = list(todo)
        announced = False
        while True:
            # submissions are recorded (with their tag) before they are sent, in the same transaction that
            # decides which keys nothing covers yet: two processes never submit the same keys
            plan = self.cache.plan_batches(self.identity, [k for k in wanted if k not in self.failures],
                                           chunk=p.batch_max_requests, stale_s=self.stale_s)
            if plan.jobs and not announced:
                print(f"[{prov.name}] resuming {len(plan.jobs)} batch job(s) recorded in {self.cache.path}", file=sys.stderr)
                announced = True
            for sub in plan.mine:
                await self._submit(sub, todo)
            if not plan.mine and not plan.waiting:
                jobs = plan.jobs
                break
            if not plan.mine:  # another live process is submitting these keys: its job will be recorded
                await asyncio.sleep(min(p.batch_poll_s, 1.0))
        await self._poll(jobs, todo)

    async def _submit(self, sub: Submission, todo: dict[str, list[_Unit]]) -> None:
        """Send one recorded submission; never twice: after a timeout, a 5xx or a kill (a submission taken over
        from a dead process) the vendor is asked for a job with the submission's tag before sending again."""
        prov, p = self.provider, self.p
        keys = [k for k in sub.keys if k in todo]
        items = [(k, todo[k][0].request) for k in keys]
        look_first = sub.recovered
        for attempt in range(p.max_retries + 1):
            if look_first:
                try:
                    found = await self._attempt(lambda: prov.batch_find(sub.tag, list(sub.keys), sub.created - 60),
                                                what="batch lookup")
                except ProviderError as exc:
                    # the job may exist: keep the submission recorded and stop the stage (a rerun looks again)
                    self._failed(ProviderError(f"looking up an earlier batch submission (tag {sub.tag}) failed; it stays "
                                               f"recorded and a rerun looks again: {exc}", status=exc.status,
                                               retryable=True, fatal=exc.fatal), keys)
                    return
                if found is not None:
                    self.cache.add_batch(found, self.identity, list(sub.keys), tag=sub.tag, resubmit_of=sub.resubmit_of)
                    print(f"[{prov.name}] found batch {found} submitted before (tag {sub.tag}); not submitting again",
                          file=sys.stderr)
                    return
                if len(keys) != len(sub.keys):
                    # left by a run that wanted other calls, and never created: its keys in this run are planned anew
                    self.cache.drop_submission(sub.tag)
                    return
            try:
                job_id = await self._attempt(lambda: prov.batch_submit(items, sub.tag), what="batch submission", retry=False)
            except ProviderError as exc:
                if exc.retryable and not exc.fatal and attempt < p.max_retries:
                    # a timeout or a 5xx does not say the job was not created: look before sending again
                    look_first = True
                    await self._backoff(attempt, exc)
                    continue
                if not exc.retryable or exc.fatal:
                    self.cache.drop_submission(sub.tag)  # refused: the vendor created nothing
                self._failed(exc, keys)
                return
            # at once: from now on a restart resumes the job, never resubmits
            self.cache.add_batch(job_id, self.identity, keys, tag=sub.tag, resubmit_of=sub.resubmit_of)
            print(f"[{prov.name}] submitted batch {job_id} ({len(keys)} calls)", file=sys.stderr)
            return

    async def _poll(self, jobs: list[BatchJob], todo: dict[str, list[_Unit]]) -> None:
        prov, p = self.provider, self.p
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
                    pending.remove(job)
                    if exc.status == 404:
                        replacement = await self._replace_lost(job, exc, todo)
                        if replacement is not None:
                            pending.append(replacement)
                        continue
                    self._failed(exc, job.keys)
                    continue
                self._collect(job, status, results, todo)
                pending.remove(job)
            if pending:
                if time.monotonic() > deadline:
                    ids = ", ".join(j.job_id for j in pending)
                    err = prov.error(f"batch job(s) {ids} still running after {p.batch_wait_s:g} s "
                                     f"(`providers.{prov.name}.batch_wait_s`); they stay recorded: rerun to resume", retryable=True)
                    self._failed(err, [k for j in pending for k in j.keys])
                    return
                await asyncio.sleep(p.batch_poll_s)

    async def _replace_lost(self, job: BatchJob, exc: ProviderError, todo: dict[str, list[_Unit]]) -> BatchJob | None:
        """A recorded job the vendor no longer knows (404: deleted, expired from its records, another
        account's): its calls are submitted once more; a replacement that is lost too fails with the reason."""
        self.cache.finish_batch(job.job_id, "missing")
        keys = [k for k in job.keys if k in todo and k not in self.answers]
        if job.resubmit_of is not None:
            self._failed(self.provider.error(
                f"batch job {job.job_id} is unknown to the vendor, and so was {job.resubmit_of}, which it replaced; "
                f"not submitting a third time (check the account and `providers.{self.provider.name}.base_url`): {exc}",
                status=404, retryable=False), keys)
            return None
        if not keys:
            return None
        print(f"[{self.provider.name}] batch {job.job_id} is unknown to the vendor (HTTP 404): submitting its "
              f"{len(keys)} call(s) once more", file=sys.stderr)
        sub = self.cache.resubmission(job, keys)
        await self._submit(sub, todo)
        return next((j for j in self.cache.pending_batches(self.identity) if j.tag == sub.tag), None)

    def _collect(self, job: BatchJob, status, results: dict, todo: dict[str, list[_Unit]]) -> None:
        for key in job.keys:
            res = results.get(key)
            if isinstance(res, ChatResult):
                if key in self.answers:
                    continue
                if key in todo and self.cache.get(key) is not None:  # collected by another process polling the same job
                    self._from_cache(key, self.cache.get(key), len(todo[key]))
                elif key in todo:
                    self._answered(key, res, len(todo[key]), batch=True)
                else:  # asked for by an earlier run with other params: keep it (it was paid) for when it is asked again
                    self.cache.put(key, self.identity, res, cost_usd=self._cost(res, True))
            elif key in todo:
                err = res if isinstance(res, ProviderError) else self.provider.error(
                    f"batch {job.job_id} ({status.state}) has no result for this call" + (f": {status.error}" if status.error else ""),
                    retryable=True)  # expired, cancelled: a rerun can submit it again
                self._failed(err, [key])
        self.cache.finish_batch(job.job_id, status.state)


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
