"""The call engine shared by every provider: bounded concurrency, the cache in front, usage counted."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

from tqdm import tqdm

from llamaduo.cache import CallCache, call_key
from llamaduo.providers.base import ChatRequest, ChatResult, Provider, ProviderError


@dataclass
class Usage:
    calls: int = 0          # requests sent (paid)
    cached: int = 0         # requests answered from the cache
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def run_calls(provider: Provider, requests: list[ChatRequest], *, cache: CallCache, desc: str) -> tuple[list[ChatResult], Usage]:
    """Answer every request (cache first, then the provider), in order.

    Each answer is cached the moment it arrives. If any request fails for good, the others still finish
    (and are cached), then ProviderError reports how many failed and the first cause.
    """
    return asyncio.run(_run_all(provider, requests, cache, desc))


async def _run_all(provider, requests, cache, desc):
    identity = provider.identity()
    usage = Usage()
    results: list[ChatResult | None] = [None] * len(requests)
    errors: list[BaseException] = []
    todo = []
    for i, req in enumerate(requests):
        hit = cache.get(call_key(identity, req))
        if hit is not None:
            results[i] = hit
            usage.cached += 1
        else:
            todo.append(i)
    sem = asyncio.Semaphore(provider.params.concurrency)
    bar = tqdm(total=len(requests), initial=usage.cached, desc=desc, unit="call", file=sys.stderr,
               mininterval=2, dynamic_ncols=True)

    async def one(i: int):
        async with sem:
            try:
                res = await provider.chat(requests[i])
            except ProviderError as exc:
                errors.append(exc)
                usage.failed += 1
                return
        cache.put(call_key(identity, requests[i]), identity, res)
        results[i] = res
        usage.calls += 1
        usage.input_tokens += res.input_tokens
        usage.output_tokens += res.output_tokens
        bar.update(1)
        bar.set_postfix(paid=usage.calls, cached=usage.cached, tok_out=usage.output_tokens, refresh=False)

    try:
        await asyncio.gather(*(one(i) for i in todo))
    finally:
        bar.close()
        await provider.aclose()
    if errors:
        raise ProviderError(f"{usage.failed} of {len(requests)} {desc} call(s) failed ({usage.calls} answered and cached, "
                            f"so a rerun pays only for the failed ones); first cause: {errors[0]}")
    return results, usage
