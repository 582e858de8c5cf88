"""What calls to a service LLM used: the Usage of one run (calls paid, cache hits, failures, retries, tokens
paid and tokens of every answer, cost), the cost of one answer from the provider's price table, and usage records added up across runs.
Imports nothing of the package: the call engine fills it in, and the reports add it up without the engine."""

from __future__ import annotations

from dataclasses import dataclass, fields


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
    # the tokens of every answer, paid now or from the cache (each cached call keeps the tokens it was paid for):
    # what the answers cost to produce, the same on a rerun from the cache as on the run that paid
    answered_input_tokens: int = 0
    answered_output_tokens: int = 0

    def add(self, other: Usage) -> Usage:
        """Add `other` field by field, in place (the calls of several runs of one stage)."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def as_dict(self) -> dict:
        return dict(self.__dict__, cost_usd=round(self.cost_usd, 6))


def call_cost(price, result, *, batch: bool) -> float:
    """USD paid for `result` (a ChatResult: its input and output tokens) at `price` (a provider's `price` params);
    the Batch API's discount when `batch`."""
    factor = price.batch_factor if batch else 1.0
    return factor * (result.input_tokens * price.input_per_mtok + result.output_tokens * price.output_per_mtok) / 1e6


def cost_bound(price, request, *, batch: bool) -> float:
    """The most `request` (a ChatRequest) can cost at `price` before it is sent: the most prompt tokens it can be
    billed for (`input_token_bound`) and every sample's `max_tokens` of output (a vendor bills no more output than
    that)."""
    factor = price.batch_factor if batch else 1.0
    return factor * (request.input_token_bound() * price.input_per_mtok
                     + request.max_tokens * request.n * price.output_per_mtok) / 1e6


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
