import pytest

from llamaduo.cache import CallCache
from llamaduo.calls import run_calls
from llamaduo.config import ProviderParams
from llamaduo.providers import ChatRequest, ProviderError, get_provider
from fakes.openai_server import FakeOpenAI


def provider(url, **kw):
    return get_provider("remote", ProviderParams(kind="openai_compatible", model="m", base_url=url, **kw))


def reqs(k):
    return [ChatRequest(messages=(("user", f"q{i}"),), temperature=0.5, max_tokens=20, n=2) for i in range(k)]


def test_answers_in_order_and_rerun_costs_nothing(tmp_path):
    with FakeOpenAI(answer=lambda req, i: f"{req['messages'][0]['content']}#{i}") as fake:
        p = provider(fake.base_url, concurrency=3)
        results, usage = run_calls(p, reqs(7), cache=CallCache(tmp_path / "c.sqlite"), desc="t")
        assert [r.choices[1].text for r in results] == [f"q{i}#1" for i in range(7)]
        assert usage.calls == 7 and usage.cached == 0 and usage.input_tokens == 70 and usage.output_tokens == 70
        again, usage2 = run_calls(p, reqs(7), cache=CallCache(tmp_path / "c.sqlite"), desc="t")
        assert len(fake.requests) == 7  # the server saw nothing new
        assert usage2.calls == 0 and usage2.cached == 7
        assert [r.choices[0].text for r in again] == [r.choices[0].text for r in results]


def test_retryable_errors_are_retried(tmp_path):
    faults = [("status", 429, {"Retry-After": "0"}), ("status", 500)]
    with FakeOpenAI(answer=lambda req, i: "ok", faults=faults) as fake:
        results, usage = run_calls(provider(fake.base_url, concurrency=1), reqs(1), cache=CallCache(tmp_path / "c.sqlite"), desc="t")
        assert results[0].choices[0].text == "ok" and len(fake.requests) == 3


def test_client_error_fails_fast_and_keeps_what_was_paid(tmp_path):
    with FakeOpenAI(answer=lambda req, i: "ok", faults=[("status", 400)]) as fake:
        cache = CallCache(tmp_path / "c.sqlite")
        with pytest.raises(ProviderError, match=r"1 of 3 t call\(s\) failed.*provider `remote` \(model m\): HTTP 400"):
            run_calls(provider(fake.base_url, concurrency=1), reqs(3), cache=cache, desc="t")
        assert len(fake.requests) == 3  # no retry of the 400
        assert len(cache) == 2
        run_calls(provider(fake.base_url, concurrency=1), reqs(3), cache=cache, desc="t")
        assert len(fake.requests) == 4  # only the failed one was asked again


def test_api_key_comes_from_the_named_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("LLAMADUO_TEST_KEY", raising=False)
    with FakeOpenAI() as fake:
        with pytest.raises(ProviderError, match="LLAMADUO_TEST_KEY"):
            run_calls(provider(fake.base_url, api_key_env="LLAMADUO_TEST_KEY"), reqs(1), cache=CallCache(tmp_path / "c"), desc="t")
        assert fake.requests == []
