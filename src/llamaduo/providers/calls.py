"""What the online and the Batch API paths of one run of calls share: the calls still to answer, the
bookkeeping of each answer and failure (its cache row, the usage, the progress bar), and the one policy of
pacing, timeouts and retries that every request to the vendor goes through.

Kept apart from both paths so that whichever answers a call, it is cached, counted and retried the same way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from llamaduo.errors import ProviderError
from llamaduo.providers.base import ChatRequest, ChatResult, Provider
from llamaduo.providers.cache import CallCache
from llamaduo.providers.limits import Pacer, backoff_delay
from llamaduo.usage import Usage, call_cost


class BudgetError(ProviderError):
    """A call not sent because it could cross the spending cap; what was paid before it stays cached."""

    def __init__(self, message: str):
        super().__init__(message, fatal=True)  # fatal: the stage stops, never writes a row without this answer


@dataclass
class Unit:
    """One API call: a whole request, or one sample of it when the provider has no native n."""

    index: int
    sample: int | None
    request: ChatRequest
    key: str


class Ledger:
    """The calls of one run and what became of each: answered (cached with its cost before anything else
    counts it, so a kill after that loses nothing), answered by another process sharing the cache, or failed."""

    def __init__(self, cache: CallCache, identity: str, price):
        self.cache, self.identity, self.price = cache, identity, price
        self.usage = Usage()
        self.todo: dict[str, list[Unit]] = {}  # per call key still to answer: its units (identical calls are sent once)
        self.answers: dict[str, ChatResult] = {}
        self.failures: dict[str, ProviderError] = {}  # per call key: why it failed for good
        self.errors: list[ProviderError] = []
        self.abort: ProviderError | None = None  # set by a fatal error: no new calls
        self.bar = None  # the progress bar (tqdm), set by the run once the cache has answered what it holds
        self.budget = cache.budget
        # paid before this run, read once: this run's own payments are added as they land (`usage.cost_usd`)
        self.spent_before = cache.paid(since=self.budget.since)["cost_usd"] if self.budget is not None else 0.0
        self.reserved: dict[str, float] = {}  # per call key sent and not yet answered: the most it can cost
        self.budget_stop: BudgetError | None = None  # set once a call did not fit the budget: no new calls

    def reserve(self, bounds: dict[str, float]) -> BudgetError | None:
        """Hold the most each call of `bounds` (key -> USD) can cost against the budget before they are sent; a
        BudgetError (nothing held) when paid + held + these could cross it. Released as each call is answered or fails."""
        b = self.budget
        new = {k: v for k, v in bounds.items() if k not in self.reserved}
        if b is None or not new:
            return None
        if self.budget_stop is not None:
            return BudgetError(f"not sent: {self.budget_stop}")
        spent, held, need = self.spent_before + self.usage.cost_usd, sum(self.reserved.values()), sum(new.values())
        if spent + held + need > b.limit_usd:
            return BudgetError(f"`{b.key}` is ${b.limit_usd:g}: ${spent:.4f} paid since {b.since_what}"
                               + (f", ${held:.4f} held by calls under way" if held else "")
                               + f", and the next {len(new)} call(s) could cost up to ${need:.4f}; not sent. What was paid "
                               f"is in the call cache: raise `{b.key}` and rerun to pay only for the rest")
        self.reserved.update(new)
        return None

    def answered(self, key: str, result: ChatResult, n_units: int) -> None:
        """An online call's answer, paid by this run (it held the call's claim)."""
        cost = call_cost(self.price, result, batch=False)
        self.cache.put(key, self.identity, result, cost_usd=cost)  # first: a kill after this line loses nothing
        self.answers[key] = result
        self.reserved.pop(key, None)
        self._paid(result, cost, n_units, batch=False)

    def collected(self, key: str, result: ChatResult) -> None:
        """A Batch API answer, for a call of this run or of another one sharing the job (a run beside it, an earlier
        run's job). Every run polling the job may collect it: the first to store it counts it as paid, whether or
        not it asked for that call, and the others take it from the cache, so the runs' usage adds up to what the
        vendor billed."""
        n_units = len(self.todo.get(key, ()))
        cost = call_cost(self.price, result, batch=True)
        self.reserved.pop(key, None)
        if self.cache.put(key, self.identity, result, cost_usd=cost, first=True):
            if n_units:
                self.answers[key] = result
            self._paid(result, cost, n_units, batch=True)
        elif n_units:
            self.from_cache(key, self.cache.get(key), n_units)

    def _paid(self, result: ChatResult, cost: float, n_units: int, *, batch: bool) -> None:
        u = self.usage
        u.calls += 1
        u.cached += max(n_units - 1, 0)  # duplicates of this call in the same run
        u.batch_calls += int(batch)
        u.input_tokens += result.input_tokens
        u.output_tokens += result.output_tokens
        u.cost_usd += cost
        self.count_tokens(result, n_units)
        self.bar.update(n_units)
        self.bar.set_postfix(paid=u.calls, cached=u.cached, retries=u.retries, tok_out=u.output_tokens, refresh=False)

    def from_cache(self, key: str, result: ChatResult, n_units: int) -> None:
        """Answered meanwhile by another process sharing the cache: free for this run."""
        self.answers[key] = result
        self.reserved.pop(key, None)
        self.usage.cached += n_units
        self.count_tokens(result, n_units)
        self.bar.update(n_units)

    def count_tokens(self, result: ChatResult, n_units: int) -> None:
        """The tokens of an answer, once for each of the run's requests it answers, paid now or not."""
        self.usage.answered_input_tokens += result.input_tokens * n_units
        self.usage.answered_output_tokens += result.output_tokens * n_units

    def failed(self, err: ProviderError, keys) -> None:
        for key in keys:
            self.reserved.pop(key, None)
            if key in self.todo and key not in self.answers and key not in self.failures:
                self.failures[key] = err
                self.usage.failed += len(self.todo[key])
        self.errors.append(err)
        if isinstance(err, BudgetError):
            # no new call is sent; calls already sent (a submitted batch job) are still collected: they are paid
            self.budget_stop = self.budget_stop or err
        elif err.fatal and self.abort is None:
            self.abort = err


class Sender:
    """Pacing, a timeout and the retry policy around every request to the vendor, online or Batch API."""

    def __init__(self, provider: Provider, ledger: Ledger):
        p = provider.params
        self.provider, self.p, self.ledger = provider, p, ledger
        self.pacer = Pacer(p.rpm, p.tpm)
        # how long a claim (or a batch submission) of another process is trusted to still be in flight: the
        # longest that process can spend on one call with every retry and backoff, plus slack
        self.stale_s = p.timeout_s * (p.max_retries + 1) + p.max_retries * max(p.retry_max_s, p.retry_after_max_s) + 60

    async def attempt(self, fn, *, tokens: int = 0, what: str = "call", retry: bool = True):
        """Run `fn()` with pacing, a timeout and our retry policy; raise the last ProviderError."""
        p = self.p
        for attempt in range(p.max_retries + 1):
            if self.ledger.abort is not None:
                raise ProviderError(f"not sent: {self.ledger.abort}", fatal=True)
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
            await self.backoff(attempt, err)

    async def backoff(self, attempt: int, err: ProviderError) -> None:
        p = self.p
        self.ledger.usage.retries += 1
        delay = backoff_delay(attempt, base=p.retry_base_s, cap=p.retry_max_s, retry_after=err.retry_after,
                              retry_after_cap=p.retry_after_max_s)
        if err.retry_after is not None:
            self.pacer.pause(delay)  # the server's limit is shared: everyone waits
        await asyncio.sleep(delay)
