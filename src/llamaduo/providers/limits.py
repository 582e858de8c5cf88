"""Per-provider pacing (requests and tokens per minute) and the retry delay policy of the call engine."""

from __future__ import annotations

import asyncio
import random
import time


class Pacer:
    """Spaces request starts evenly so that no minute holds more than `rpm` requests or `tpm` tokens.

    Even spacing (no burst allowance) never overshoots a vendor's sliding window, and still reaches the
    full limit in steady state. A 429 with Retry-After pauses every request of the provider, not just the
    one that got it: the limit is shared.
    """

    def __init__(self, rpm: int | None, tpm: int | None, clock=time.monotonic):
        self.rpm, self.tpm, self.clock = rpm, tpm, clock
        self._next = 0.0  # earliest start of the next request

    async def acquire(self, tokens: int = 0) -> None:
        now = self.clock()
        start = max(now, self._next)
        gap = 0.0
        if self.rpm:
            gap = 60.0 / self.rpm
        if self.tpm:
            gap = max(gap, 60.0 * min(tokens, self.tpm) / self.tpm)
        self._next = start + gap  # reserved before sleeping: no await between read and write, so no lock
        if start > now:
            await asyncio.sleep(start - now)

    def pause(self, seconds: float) -> None:
        self._next = max(self._next, self.clock() + seconds)


def backoff_delay(attempt: int, *, base: float, cap: float, retry_after: float | None = None,
                  retry_after_cap: float = 120.0, rng: random.Random = random._inst) -> float:
    """Delay before retry number `attempt` (0-based): the server's Retry-After when it gave one, else
    exponential (base x 2^attempt, capped) with jitter over its upper half, so clients that failed together
    do not retry together.

    Retry-After is bounded by `retry_after_cap`: the engine pauses every request of the provider for it, so a
    server (or a proxy) answering `86400`, a far date or `inf` would otherwise stall the whole run for a day.
    NaN or a negative value means nothing: the exponential delay applies."""
    if retry_after is not None and retry_after >= 0:  # False for NaN too
        return min(retry_after, retry_after_cap)
    d = min(cap, base * (2 ** attempt))
    return d / 2 + rng.uniform(0, d / 2)
