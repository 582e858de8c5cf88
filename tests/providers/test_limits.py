import asyncio
import random

import pytest

from llamaduo.providers.base import retry_after_seconds
from llamaduo.providers.limits import Pacer, backoff_delay


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def starts(pacer: Pacer, clock: Clock, tokens: list[int]) -> list[float]:
    """Start times the pacer hands out, with sleeping replaced by advancing a fake clock."""
    out = []

    async def go():
        real_sleep = asyncio.sleep

        async def fake_sleep(s):
            clock.t += s
            await real_sleep(0)

        asyncio.sleep = fake_sleep
        try:
            for t in tokens:
                await pacer.acquire(t)
                out.append(clock.t)
        finally:
            asyncio.sleep = real_sleep

    asyncio.run(go())
    return out


def test_rpm_spaces_starts_evenly():
    clock = Clock()
    assert starts(Pacer(rpm=120, tpm=None, clock=clock), clock, [0] * 5) == pytest.approx([0, 0.5, 1.0, 1.5, 2.0])


def test_tpm_spaces_by_tokens_and_the_tighter_limit_wins():
    clock = Clock()
    # 600 tokens a minute: a 100-token request uses 10 s of budget, more than the 1 s the rpm allows
    assert starts(Pacer(rpm=60, tpm=600, clock=clock), clock, [100, 100, 10]) == pytest.approx([0, 10, 20])


def test_pause_holds_every_later_start():
    clock = Clock()
    pacer = Pacer(rpm=None, tpm=None, clock=clock)
    pacer.pause(3)
    assert starts(pacer, clock, [0, 0]) == pytest.approx([3, 3])


def test_backoff_grows_is_capped_jittered_and_yields_to_retry_after():
    rng = random.Random(0)
    delays = [backoff_delay(a, base=1, cap=8, rng=rng) for a in range(6)]
    for a, d in enumerate(delays):
        top = min(8, 2 ** a)
        assert top / 2 <= d <= top
    assert backoff_delay(3, base=1, cap=8, retry_after=0.25) == 0.25


@pytest.mark.parametrize("headers,expected", [
    ({"retry-after": "2"}, 2.0), ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5), ({"retry-after": "soon"}, None),
    ({}, None), (None, None), ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
])
def test_retry_after_forms(headers, expected):
    assert retry_after_seconds(headers) == expected
