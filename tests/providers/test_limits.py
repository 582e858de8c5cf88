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


@pytest.mark.parametrize("retry_after", [86400.0, float("inf")])
def test_a_huge_retry_after_is_capped(retry_after):
    assert backoff_delay(0, base=1, cap=8, retry_after=retry_after, retry_after_cap=120) == 120


@pytest.mark.parametrize("retry_after", [float("nan"), -5.0, float("-inf")])
def test_a_meaningless_retry_after_falls_back_to_the_backoff(retry_after):
    d = backoff_delay(2, base=1, cap=8, retry_after=retry_after, retry_after_cap=120, rng=random.Random(0))
    assert 2 <= d <= 4


@pytest.mark.parametrize("value", ["inf", "nan", "-3", "Infinity"])
def test_retry_after_headers_that_mean_nothing(value):
    assert retry_after_seconds({"retry-after": value}) is None and retry_after_seconds({"retry-after-ms": value}) is None


def test_a_far_http_date_is_capped_by_the_engine():
    far = retry_after_seconds({"retry-after": "Fri, 01 Jan 2100 00:00:00 GMT"})
    assert far > 86400 * 365  # what the server said ...
    assert backoff_delay(0, base=1, cap=8, retry_after=far, retry_after_cap=120) == 120  # ... and what we wait


def test_the_engine_waits_at_most_retry_after_max_s(tmp_path):
    """A 429 saying `Retry-After: 86400` costs the run retry_after_max_s, not a day."""
    import time

    from fakes.openai_server import FakeOpenAI
    from llamaduo.config import ProviderParams
    from llamaduo.providers import ChatRequest, get_provider
    from llamaduo.providers.cache import CallCache
    from llamaduo.providers.engine import run_calls

    with FakeOpenAI(answer=lambda req, i: "ok", faults=[("status", 429, {"Retry-After": "86400"})]) as fake:
        p = get_provider("svc", ProviderParams(kind="openai_compatible", model="m", base_url=fake.base_url,
                                               retry_after_max_s=0.3, retry_base_s=0.1, retry_max_s=1))
        t0 = time.monotonic()
        results, usage = run_calls(p, [ChatRequest(messages=(("user", "q"),), temperature=0, max_tokens=5)],
                                   cache=CallCache(tmp_path / "c"), desc="t", progress=False)
        assert results[0].choices[0].text == "ok" and usage.retries == 1
        assert 0.3 <= time.monotonic() - t0 < 5
