"""Each hosted provider, through its real SDK, against a loopback fake of its wire format."""

import importlib
import json
import time

import pytest

from fakes.anthropic_server import FakeAnthropic
from fakes.gemini_server import FakeGemini
from fakes.openai_server import FakeOpenAI
from fakes.server import prompt_text
from llamaduo.config import Params, ProviderParams
from llamaduo.errors import ParamsError
from llamaduo.judging.protocol import SCORE_SCHEMA, parse_score
from llamaduo.providers import ChatRequest, ProviderError, get_provider
from llamaduo.providers.cache import CallCache
from llamaduo.providers.engine import run_calls

FAKES = {"openai": FakeOpenAI, "anthropic": FakeAnthropic, "gemini": FakeGemini}
KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY"}
SDKS = {"openai": "openai", "anthropic": "anthropic", "gemini": "google.genai"}
SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}


@pytest.fixture(params=sorted(FAKES))
def kind(request, monkeypatch):
    for env in KEYS.values():
        monkeypatch.setenv(env, "test-key-not-secret")
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    # imported before any test's clock starts: a first import of an SDK takes ~2 s here (anthropic), which a
    # test timing a 0.4 s timeout would count when it happens to run first in its process
    importlib.import_module(SDKS[request.param])
    return request.param


def make(kind, fake, **kw):
    kw = {"retry_base_s": 0.01, "max_retries": 5} | kw
    return get_provider("svc", ProviderParams(kind=kind, model="m-1", base_url=fake.base_url, **kw))


def echo(req, k):
    return json.dumps({"a": f"{prompt_text(req)}#{k}"})


def reqs(k, n=1, schema=SCHEMA):
    return [ChatRequest(messages=(("system", "Be brief."), ("user", f"q{i}")), temperature=0.5, max_tokens=20, n=n,
                        json_schema=schema) for i in range(k)]


def run(provider, requests, tmp_path, name="c.sqlite"):
    return run_calls(provider, requests, cache=CallCache(tmp_path / name), desc="t", progress=False)


def test_structured_answers_n_samples_and_a_free_rerun(kind, tmp_path):
    with FAKES[kind](answer=echo) as fake:
        results, usage = run(make(kind, fake), reqs(3, n=2), tmp_path)
        texts = [[json.loads(c.text)["a"] for c in r.choices] for r in results]
        body = fake.requests[0]
        if kind == "anthropic":  # no n: 2 calls per request, the answer is the forced tool's input
            assert texts == [[f"q{i}#0", f"q{i}#0"] for i in range(3)] and usage.calls == 6 and len(fake.requests) == 6
            assert body["tool_choice"] == {"type": "tool", "name": "answer"} and body["tools"][0]["input_schema"] == SCHEMA
            assert body["system"] == "Be brief." and "temperature" not in body  # the API rejects sampling params now
        else:
            assert texts == [[f"q{i}#0", f"q{i}#1"] for i in range(3)] and usage.calls == 3 and len(fake.requests) == 3
        if kind == "openai":
            assert body["n"] == 2 and body["response_format"]["json_schema"]["schema"] == SCHEMA
            assert body["max_completion_tokens"] == 20 and body["messages"][0] == {"role": "system", "content": "Be brief."}
        if kind == "gemini":
            cfg = body["generationConfig"]
            assert cfg["candidateCount"] == 2 and cfg["responseJsonSchema"] == SCHEMA and cfg["maxOutputTokens"] == 20
            assert cfg["responseMimeType"] == "application/json" and body["systemInstruction"]["parts"][0]["text"] == "Be brief."
        assert usage.input_tokens > 0 and usage.output_tokens > 0
        snapshot = {"openai": "m-1-2026-01-15", "anthropic": "m-1-20260115", "gemini": "fake-001"}[kind]
        assert {r.model for r in results} == {snapshot}  # what the service said answered, not the alias we sent
        again, usage2 = run(make(kind, fake), reqs(3, n=2), tmp_path)
        assert usage2.calls == 0 and usage2.cached == usage.calls and len(fake.requests) == usage.calls
        assert {r.model for r in again} == {snapshot}  # kept in the call cache
        assert [[c.text for c in r.choices] for r in again] == [[c.text for c in r.choices] for r in results]


def test_retryable_faults_are_retried_by_our_engine(kind, tmp_path):
    faults = [("status", 429, {"Retry-After": "0"}), ("status", 500), ("status", 503), ("drop",), ("reset",), ("cut",),
              ("broken",)]
    with FAKES[kind](answer=echo, faults=faults) as fake:
        results, usage = run(make(kind, fake, concurrency=1, max_retries=7), reqs(1), tmp_path)
        assert json.loads(results[0].choices[0].text) == {"a": "q0#0"}
        assert len(fake.requests) == 8 and usage.retries == 7 and usage.calls == 1  # SDK retries off: each try is ours
        assert len(fake.billed) == 1 and fake.billed[0]["tokens"] == (usage.input_tokens, usage.output_tokens)  # one paid


def test_slow_answer_past_the_timeout_is_retried(kind, tmp_path):
    # the first answer comes 20 s late; the retry after the 0.4 s timeout answers at once. The bound sits far
    # from both, so a slow or busy CPU cannot move the outcome
    with FAKES[kind](answer=echo, faults=[("sleep", 20)]) as fake:
        t = time.monotonic()
        results, usage = run(make(kind, fake, concurrency=1, timeout_s=0.4), reqs(1), tmp_path)
        assert json.loads(results[0].choices[0].text)["a"] == "q0#0"
        assert len(fake.requests) == 2 and usage.retries == 1 and time.monotonic() - t < 10


def test_retry_after_is_honoured(kind, tmp_path):
    with FAKES[kind](answer=echo, faults=[("status", 429, {"Retry-After": "0.6"})]) as fake:
        t = time.monotonic()
        run(make(kind, fake, retry_base_s=0.001, retry_max_s=0.001), reqs(1), tmp_path)
        assert time.monotonic() - t >= 0.6 and len(fake.requests) == 2


@pytest.mark.parametrize("status", [401, 403, 404])
def test_auth_and_not_found_stop_everything_at_once(kind, status, tmp_path):
    with FAKES[kind](answer=echo, faults=[("status", status)]) as fake:
        t = time.monotonic()
        with pytest.raises(ProviderError, match=rf"provider `svc` \(model m-1\): HTTP {status}") as exc:
            run(make(kind, fake, concurrency=1, retry_base_s=5), reqs(4), tmp_path)
        assert len(fake.requests) == 1 and time.monotonic() - t < 3  # no retry, no further call
        assert "4 of 4" in str(exc.value)


def test_bad_request_fails_that_call_only(kind, tmp_path):
    with FAKES[kind](answer=echo, faults=[("status", 400)]) as fake:
        cache = CallCache(tmp_path / "c.sqlite")
        with pytest.raises(ProviderError, match=r"1 of 3 t call\(s\) failed.*HTTP 400"):
            run_calls(make(kind, fake, concurrency=1, retry_base_s=5), reqs(3), cache=cache, desc="t", progress=False)
        assert len(fake.requests) == 3 and len(cache) == 2


def test_give_up_after_max_retries_names_the_cause(kind, tmp_path):
    with FAKES[kind](answer=echo, faults=[("status", 503)] * 3) as fake:
        with pytest.raises(ProviderError, match=r"HTTP 503.*gave up after 2 retries"):
            run(make(kind, fake, max_retries=2), reqs(1), tmp_path)
        assert len(fake.requests) == 3


def test_refusal_empty_and_truncated_answers_are_counted_failures_with_reasons(kind, tmp_path):
    faults = [("refusal",), ("empty",), ("truncated",)]
    with FAKES[kind](answer=lambda req, k: json.dumps({"reason": "ok", "similarity": 80, "precision": 90}),
                     faults=faults) as fake:
        results, usage = run(make(kind, fake, concurrency=1), reqs(4, schema=SCORE_SCHEMA), tmp_path)
        assert usage.failed == 0 and len(fake.requests) == 4  # well-formed responses: not retried, not an engine error
        verdicts = [parse_score(r.choices[0].text, r.choices[0].finish_reason) for r in results]
        assert results[0].choices[0].finish_reason == "refusal" and results[0].choices[0].refusal
        assert verdicts[0][0] is None and verdicts[1][0] is None
        assert verdicts[2] == (None, "truncated at max_tokens")
        assert verdicts[3] == ({"precision": 90.0, "similarity": 80.0}, None)


def test_missing_key_names_the_variable_and_sends_nothing(kind, tmp_path, monkeypatch):
    monkeypatch.delenv(KEYS[kind])
    with FAKES[kind]() as fake:
        with pytest.raises(ProviderError, match=KEYS[kind]):
            run(make(kind, fake), reqs(1), tmp_path)
        assert fake.requests == []


def test_key_goes_in_a_header_only_and_api_key_env_overrides(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_VENDOR_KEY", "sk-override-0123")
    with FAKES[kind](answer=echo) as fake:
        run(make(kind, fake, api_key_env="MY_VENDOR_KEY"), reqs(1), tmp_path)
        headers = json.dumps(fake.seen_headers)
        assert "sk-override-0123" in headers and "test-key-not-secret" not in headers


def test_batch_submit_give_up_then_resume_by_the_recorded_id(kind, tmp_path):
    with FAKES[kind](answer=echo, batch_polls=3) as fake:
        p = dict(batch=True, batch_poll_s=0.05)
        # first run: the job outlives our patience; it stays recorded
        with pytest.raises(ProviderError, match="still running.*rerun to resume"):
            run(make(kind, fake, batch_wait_s=0.01, **p), reqs(3, n=2), tmp_path)
        cache = CallCache(tmp_path / "c.sqlite")
        jobs = cache.pending_batches(make(kind, fake).identity())
        assert len(jobs) == 1 and len(fake.batches) == 1
        # second run: polls the same job, collects, submits nothing
        results, usage = run(make(kind, fake, **p), reqs(3, n=2), tmp_path)
        assert len(fake.batches) == 1 and fake.requests == []  # no online call either
        assert [json.loads(c.text)["a"] for c in results[1].choices][0] == "q1#0"
        assert usage.batch_calls == usage.calls == (6 if kind == "anthropic" else 3)
        assert cache.pending_batches(make(kind, fake).identity()) == []
        # third run: all from the cache
        polls = sum(fake.hits.values())
        _, usage3 = run(make(kind, fake, **p), reqs(3, n=2), tmp_path)
        assert usage3.calls == 0 and sum(fake.hits.values()) == polls


@pytest.mark.parametrize("entry,message", [
    ({"kind": "local", "model": "m", "batch": True}, "`batch` needs a kind with a Batch API"),
    ({"kind": "anthropic", "model": "m", "native_n": True}, "`native_n` cannot be true for `anthropic`"),
    ({"kind": "openai", "model": "m", "retry_base_s": 9, "retry_max_s": 1}, "`retry_base_s` (9.0) is larger than `retry_max_s`"),
    ({"kind": "gemini", "model": "m", "rpm": 0}, "`providers.x.rpm`"),
    ({"kind": "openai", "model": "m", "price": {"input_per_mtok": 1, "ouput_per_mtok": 2}}, "`providers.x.price.ouput_per_mtok`: unknown key"),
])
def test_provider_params_errors_name_the_key(tmp_path, entry, message):
    import yaml

    from llamaduo.config import load_params

    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump({"providers": {"local": {"kind": "local", "model": "m"}, "x": entry}}))
    with pytest.raises(ParamsError) as exc:
        load_params(f)
    assert message in str(exc.value) and "x" in str(exc.value)


def test_every_kind_is_registered_and_buildable():
    from llamaduo.registries import PROVIDERS

    assert set(PROVIDERS) == set(ProviderParams.model_fields["kind"].annotation.__args__)
    Params.model_validate({"providers": {"service": {"kind": "local", "model": "m"},
                                         **{k: {"kind": k, "model": "m"} for k in FAKES}}})


def test_credentials_in_base_url_are_refused_in_params_and_read_from_the_environment(tmp_path, monkeypatch):
    from llamaduo.urls import mask_url

    secret = "SENTINELkey-9d2e"
    url = f"https://user:{secret}@llm.example.com/v1?api-key={secret}&api-version=2024-10-21"
    assert mask_url(url) == "https://***@llm.example.com/v1?api-key=***&api-version=2024-10-21"
    # a literal credential never gets into params (committed, in dvc.lock and MLflow): the error says what to write
    with pytest.raises(ValueError, match=r"`base_url` carries a credential.*\$\{VAR\}"):
        ProviderParams(kind="openai_compatible", model="m", base_url=url)
    with pytest.raises(ValueError, match="carries a credential"):
        ProviderParams(kind="openai", model="m", base_url="https://gw.example/v1?token=abc123")
    ProviderParams(kind="openai", model="m", base_url="https://gw.example/v1?api-version=2024-10-21")  # not a credential

    ref = "https://user:${GW_TOKEN}@llm.example.com/v1?api-key=${GW_TOKEN}&api-version=2024-10-21"
    monkeypatch.setenv("GW_TOKEN", secret)
    p = get_provider("svc", ProviderParams(kind="openai_compatible", model="m", base_url=ref))
    assert p.base_url == url  # requests go to the real URL, the value from the environment
    assert secret not in p.identity() and "llm.example.com/v1" in p.identity()
    # nor in data/services.json (committed; the service stages depend on it)
    from llamaduo.services import services
    svc = services(Params.model_validate({"providers": {"service": {"kind": "openai_compatible", "model": "m", "base_url": ref}}}))
    assert secret not in json.dumps(svc)
    err = p.error(f"Connection error to {url}", status=400)
    assert secret not in str(err)
    monkeypatch.delenv("GW_TOKEN")
    with pytest.raises(ProviderError, match=r"`providers.svc.base_url` refers to \$\{GW_TOKEN\}, which is not set"):
        get_provider("svc", ProviderParams(kind="openai_compatible", model="m", base_url=ref))
    # a real failing call: whatever the SDK says about the URL is redacted
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    monkeypatch.setenv("GW_TOKEN", secret)
    with FakeOpenAI() as fake:
        ref = fake.base_url.replace("http://", "http://u:${GW_TOKEN}@") + "?key=${GW_TOKEN}"
        p = get_provider("svc", ProviderParams(kind="openai_compatible", model="m", base_url=ref, max_retries=0))
        with pytest.raises(ProviderError) as exc_info:
            run(p, reqs(1), tmp_path)
        assert secret not in str(exc_info.value)


@pytest.mark.parametrize("fault", [("sleep", 1.5), ("status", 503)])
def test_a_batch_submission_that_timed_out_is_found_not_paid_twice(kind, tmp_path, fault):
    """Each vendor's job made although the client never heard back is found (OpenAI: metadata tag; Gemini:
    display name; Anthropic: its custom ids / request count) instead of submitted again."""
    with FAKES[kind](answer=echo, batch_create_faults=[fault]) as fake:
        p = make(kind, fake, batch=True, batch_poll_s=0.05, timeout_s=0.5)
        results, usage = run(p, reqs(3), tmp_path)
        assert len(fake.batches) == 1 and usage.batch_calls == usage.calls > 0
        assert [json.loads(r.choices[0].text)["a"] for r in results] == [f"q{i}#0" for i in range(3)]


def test_a_lost_batch_job_is_resubmitted_once(kind, tmp_path):
    with FAKES[kind](answer=echo, lose_batches=True) as fake:
        with pytest.raises(ProviderError, match="unknown to the vendor"):
            run(make(kind, fake, batch=True, batch_poll_s=0.05), reqs(2), tmp_path)
        assert len(fake.lost_batches) == 2 and not fake.batches
