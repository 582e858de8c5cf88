import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from fakes.anthropic_server import FakeAnthropic
from fakes.openai_server import FakeOpenAI
from fakes.server import prompt_text
from llamaduo.config import ProviderParams
from llamaduo.providers import ChatRequest, ProviderError, get_provider
from llamaduo.providers.cache import CallCache
from llamaduo.providers.engine import run_calls

CLIENT = ROOT / "support" / "fakes" / "client.py"


def provider(url, **kw):
    return get_provider("remote", ProviderParams(kind="openai_compatible", model="m", base_url=url, **kw))


def reqs(k, n=2):
    return [ChatRequest(messages=(("user", f"q{i}"),), temperature=0.5, max_tokens=20, n=n) for i in range(k)]


def test_answers_in_order_and_rerun_costs_nothing(tmp_path):
    with FakeOpenAI(answer=lambda req, i: f"{prompt_text(req)}#{i}") as fake:
        p = provider(fake.base_url, concurrency=3)
        results, usage = run_calls(p, reqs(7), cache=CallCache(tmp_path / "c.sqlite"), desc="t")
        assert [r.choices[1].text for r in results] == [f"q{i}#1" for i in range(7)]
        assert usage.calls == 7 and usage.cached == 0 and usage.input_tokens == 70 and usage.output_tokens == 70
        again, usage2 = run_calls(p, reqs(7), cache=CallCache(tmp_path / "c.sqlite"), desc="t")
        assert len(fake.requests) == 7  # the server saw nothing new
        assert usage2.calls == 0 and usage2.cached == 7
        assert [r.choices[0].text for r in again] == [r.choices[0].text for r in results]


def test_identical_requests_in_one_run_are_sent_once(tmp_path):
    with FakeOpenAI(answer=lambda req, i: "ok") as fake:
        results, usage = run_calls(provider(fake.base_url), reqs(2) + reqs(2), cache=CallCache(tmp_path / "c"), desc="t")
        assert len(fake.requests) == 2 and usage.calls == 2 and usage.cached == 2 and len(results) == 4


def test_cost_comes_from_the_price_table(tmp_path):
    with FakeOpenAI(answer=lambda req, i: "ok") as fake:
        p = provider(fake.base_url, price={"input_per_mtok": 2.5, "output_per_mtok": 10.0})
        _, usage = run_calls(p, reqs(4), cache=CallCache(tmp_path / "c"), desc="t")
        # 4 calls x (10 input tokens x 2.5 + 10 output tokens x 10) / 1e6
        assert usage.cost_usd == pytest.approx(4 * (10 * 2.5 + 10 * 10.0) / 1e6)
        assert usage.as_dict()["cost_usd"] == pytest.approx(0.0005)
        _, usage2 = run_calls(p, reqs(4), cache=CallCache(tmp_path / "c"), desc="t")
        assert usage2.cost_usd == 0  # cached answers cost nothing this run


def test_retryable_errors_are_retried(tmp_path):
    faults = [("status", 429, {"Retry-After": "0"}), ("status", 500)]
    with FakeOpenAI(answer=lambda req, i: "ok", faults=faults) as fake:
        results, usage = run_calls(provider(fake.base_url, concurrency=1), reqs(1), cache=CallCache(tmp_path / "c.sqlite"), desc="t")
        assert results[0].choices[0].text == "ok" and len(fake.requests) == 3 and usage.retries == 2


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


# -- a real client process killed with SIGKILL mid-run, then restarted


def client_env():
    support = str(ROOT / "support")
    return dict(os.environ, OPENAI_API_KEY="k-openai", ANTHROPIC_API_KEY="k-anthropic",
                PYTHONPATH=support + os.pathsep + os.environ.get("PYTHONPATH", ""))


def start_client(params: dict, cache: Path, n_requests: int, n_samples: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CLIENT), json.dumps(params), str(cache), str(n_requests), str(n_samples)],
                            env=client_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(cond, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def rows(cache: Path, table: str, where: str = "") -> int:
    if not cache.exists():
        return 0
    with sqlite3.connect(cache) as db:
        try:
            return db.execute(f"SELECT COUNT(*) FROM {table} {where}").fetchone()[0]
        except sqlite3.OperationalError:  # the client has not created the table yet
            return 0


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.splitlines()[-1])


@pytest.mark.parametrize("kind,fake_cls,calls_per_prompt", [("openai", FakeOpenAI, 1), ("anthropic", FakeAnthropic, 2)])
def test_killed_run_restarted_pays_for_nothing_twice(tmp_path, kind, fake_cls, calls_per_prompt):
    answer = lambda req, k: json.dumps({"a": prompt_text(req)})  # noqa: E731
    held_from = 5  # the server answers 5 calls, then holds every further one: the client dies with 2 in flight
    with fake_cls(answer=answer, hold_after=held_from) as fake:
        params = {"kind": kind, "model": "m-1", "base_url": fake.base_url, "concurrency": 2}
        cache = tmp_path / "calls.sqlite"
        proc = start_client(params, cache, 8, 2)
        wait_for(lambda: fake.held == 2 and rows(cache, "calls") == held_from, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        lost = list(fake.prompts[held_from:])  # sent, never answered: the only calls a restart may repeat
        fake.release()
        out = finish(start_client(params, cache, 8, 2))
        assert out["texts"] == [[json.dumps({"a": f"q{i}"})] * 2 for i in range(8)]
        assert out["usage"]["cached"] == held_from and out["usage"]["calls"] == 8 * calls_per_prompt - held_from
        # every answer the server gave was paid once; the extra requests are exactly the two that were in flight
        assert collections.Counter(fake.answered) == {f"q{i}": calls_per_prompt for i in range(8)}
        assert len(fake.prompts) == 8 * calls_per_prompt + len(lost) and len(lost) == 2


def test_killed_batch_run_resumes_polling_the_recorded_job(tmp_path):
    with FakeOpenAI(answer=lambda req, k: json.dumps({"a": f"{prompt_text(req)}#{k}"}), batch_polls=10**6) as fake:
        params = {"kind": "openai", "model": "m-1", "base_url": fake.base_url, "batch": True, "batch_poll_s": 0.05}
        cache = tmp_path / "calls.sqlite"
        proc = start_client(params, cache, 6, 2)
        wait_for(lambda: rows(cache, "batch_jobs", "WHERE state = 'pending'") == 1 and fake.hits["GET batches"] >= 2, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        fake.batch_polls = 0  # the job finishes while nobody watches
        out = finish(start_client(params, cache, 6, 2))
        assert out["texts"][5] == [json.dumps({"a": "q5#0"}), json.dumps({"a": "q5#1"})]
        assert fake.hits["POST batches"] == 1 and fake.hits["POST files"] == 1 and fake.requests == []
        assert out["usage"]["batch_calls"] == 6 and rows(cache, "batch_jobs", "WHERE state = 'completed'") == 1


# -- two processes sharing one cache: an in-flight call is claimed, the other process waits for its answer


def test_two_processes_sharing_a_cache_pay_each_call_once(tmp_path):
    with FakeOpenAI(answer=lambda req, k: json.dumps({"a": prompt_text(req)}), latency=0.02) as fake:
        params = {"kind": "openai", "model": "m-1", "base_url": fake.base_url, "concurrency": 4}
        cache, go = tmp_path / "calls.sqlite", tmp_path / "go"
        procs = [subprocess.Popen([sys.executable, str(CLIENT), json.dumps(params), str(cache), "100", "1", str(go)],
                                  env=client_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        wait_for(lambda: len(list(tmp_path.glob("go.ready.*"))) == 2, procs[0])
        go.touch()  # both start asking at once: every key is a miss for both
        outs = [finish(p) for p in procs]
        assert len(fake.requests) == 100 and collections.Counter(fake.prompts) == {f"q{i}": 1 for i in range(100)}
        for out in outs:
            assert out["texts"] == [[json.dumps({"a": f"q{i}"})] for i in range(100)]
        assert sum(o["usage"]["calls"] for o in outs) == 100 and sum(o["usage"]["cached"] for o in outs) == 100
        assert all(o["usage"]["calls"] > 0 for o in outs)  # claimed as they are sent: the two share the work
        assert rows(cache, "claims") == 0


# -- a request that fails on its own does not fail the stage; errors no request can pass still do


def judge_parse(text, finish, refusal):
    return ({"a": text}, None) if text == "ok" else (None, f"unusable: {text!r}")


def test_a_400_is_a_failed_outcome_and_the_rest_goes_on(tmp_path):
    from llamaduo.providers.engine import ask

    with FakeOpenAI(answer=lambda req, i: "ok", faults=[("status", 400)]) as fake:
        cache = CallCache(tmp_path / "c.sqlite")
        p = provider(fake.base_url, concurrency=1)
        out, usage = ask(p, reqs(3), judge_parse, retries=2, reask=lambda r, cause, n, a: r, cache=cache, desc="judge")
        failed = [o for slots in out for o in slots if o.error]
        assert len(failed) == 2 and all(o.call_failed and o.value is None for o in failed)  # both samples of one request
        assert "HTTP 400" in failed[0].error and "injected 400" in failed[0].error
        assert [o.value for o in out[1] + out[2]] == [{"a": "ok"}] * 4
        assert usage.failed == 1 and usage.calls == 2 and len(fake.requests) == 3  # no re-ask of a failed call
        assert len(cache) == 2  # not cached: a rerun asks it again
        out2, usage2 = ask(p, reqs(3), judge_parse, retries=2, reask=lambda r, cause, n, a: r, cache=cache, desc="judge")
        assert all(o.error is None for slots in out2 for o in slots) and usage2.calls == 1 and len(fake.requests) == 4


def test_run_calls_returns_failed_results_only_when_asked(tmp_path):
    with FakeOpenAI(answer=lambda req, i: "ok", faults=[("status", 422)]) as fake:
        results, usage = run_calls(provider(fake.base_url, concurrency=1), reqs(2), cache=CallCache(tmp_path / "c"), desc="t",
                                   keep_failed=True)
        assert results[0].error and "HTTP 422" in results[0].error and results[0].extra["status"] == 422
        assert [c.finish_reason for c in results[0].choices] == ["error", "error"]
        assert results[1].error is None and results[1].choices[0].text == "ok" and usage.failed == 1


@pytest.mark.parametrize("faults,match", [
    ([("status", 401)], "HTTP 401"),                       # no request can pass: stop at once
    ([("status", 405)], "HTTP 405"),
    ([("status", 500)] * 2, "gave up after 1 retries"),    # a rerun may pass: no output may record it
])
def test_errors_that_stop_the_stage_still_raise_after_caching(tmp_path, faults, match):
    from llamaduo.providers.engine import ask

    with FakeOpenAI(answer=lambda req, i: "ok", faults=[("sleep", 0), *faults]) as fake:  # the first request is answered
        cache = CallCache(tmp_path / "c.sqlite")
        p = provider(fake.base_url, concurrency=1, max_retries=1, retry_base_s=0.01)
        with pytest.raises(ProviderError, match=match):
            ask(p, reqs(3), judge_parse, retries=0, reask=lambda r, cause, n, a: r, cache=cache, desc="judge")
        assert len(cache) == len(fake.answered) >= 1  # what was paid is kept


def test_costs_are_recorded_per_call_in_the_cache(tmp_path):
    with FakeOpenAI(answer=lambda req, i: "ok") as fake:
        cache = CallCache(tmp_path / "c.sqlite")
        since = time.time()
        p = provider(fake.base_url, price={"input_per_mtok": 2.5, "output_per_mtok": 10.0})
        _, usage = run_calls(p, reqs(4), cache=cache, desc="t")
        run_calls(p, reqs(4), cache=cache, desc="t")  # cached: nothing more paid
        assert cache.paid(since) == {"calls": 4, "cost_usd": pytest.approx(usage.cost_usd), "input_tokens": 40,
                                     "output_tokens": 40}
        assert cache.paid(time.time() + 1)["calls"] == 0


# -- Batch API submissions are idempotent: recorded before they are sent, looked up before they are sent again


def batch_params(fake, **kw):
    return {"kind": "openai", "model": "m-1", "base_url": fake.base_url, "batch": True, "batch_poll_s": 0.05,
            "retry_base_s": 0.01} | kw


def batch_run(params, cache, k=6):
    p = get_provider("svc", ProviderParams.model_validate(params))
    return run_calls(p, reqs(k), cache=cache, desc="t", progress=False)


@pytest.mark.parametrize("fault", [("sleep", 1.5), ("status", 503)])
def test_a_submission_that_timed_out_after_the_job_was_made_is_not_sent_again(tmp_path, monkeypatch, fault):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    answer = lambda req, k: f"{prompt_text(req)}#{k}"  # noqa: E731
    with FakeOpenAI(answer=answer, batch_create_faults=[fault]) as fake:
        results, usage = batch_run(batch_params(fake, timeout_s=0.5), CallCache(tmp_path / "c.sqlite"))
        assert len(fake.batches) == 1 and fake.hits["POST batches"] == 1  # one job holds these requests
        assert [r.choices[1].text for r in results] == [f"q{i}#1" for i in range(6)] and usage.batch_calls == 6
        [job] = fake.batches.values()
        assert job["meta"]["llamaduo_tag"].startswith("llamaduo-")
        assert rows(tmp_path / "c.sqlite", "batch_submissions") == 0


def test_a_run_killed_right_after_submitting_resumes_the_job_it_never_heard_of(tmp_path):
    with FakeOpenAI(answer=lambda req, k: json.dumps({"a": f"{prompt_text(req)}#{k}"}), batch_create_faults=[("hold",)]) as fake:
        params, cache = batch_params(fake), tmp_path / "calls.sqlite"
        proc = start_client(params, cache, 6, 2)
        # the vendor made the job; the client is killed before the job id reaches it
        wait_for(lambda: fake.held == 1 and len(fake.batches) == 1, proc)
        assert rows(cache, "batch_submissions") == 1 and rows(cache, "batch_jobs") == 0
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        fake.release()
        out = finish(start_client(params, cache, 6, 2))
        assert out["texts"][5] == [json.dumps({"a": "q5#0"}), json.dumps({"a": "q5#1"})]
        assert fake.hits["POST batches"] == 1 and len(fake.batches) == 1 and fake.requests == []
        assert out["usage"]["batch_calls"] == 6 and rows(cache, "batch_jobs", "WHERE state = 'completed'") == 1


def test_a_recorded_job_the_vendor_lost_is_submitted_once_more(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    with FakeOpenAI(answer=lambda req, k: f"{prompt_text(req)}#{k}", batch_polls=10**6) as fake:
        cache = CallCache(tmp_path / "c.sqlite")
        with pytest.raises(ProviderError, match="still running"):
            batch_run(batch_params(fake, batch_wait_s=0.2), cache)
        [lost] = list(fake.batches)
        fake.lose_batch(lost)  # the vendor no longer knows it: 404
        fake.batch_polls = 0
        results, usage = batch_run(batch_params(fake), cache)
        assert [r.choices[0].text for r in results] == [f"q{i}#0" for i in range(6)] and usage.batch_calls == 6
        assert fake.hits["POST batches"] == 2
        assert rows(tmp_path / "c.sqlite", "batch_jobs", "WHERE state = 'missing'") == 1
        assert rows(tmp_path / "c.sqlite", "batch_jobs", "WHERE state = 'completed'") == 1


def test_runs_sharing_a_batch_job_count_every_answer_once(tmp_path, monkeypatch):
    """Runs sharing a cache poll the same jobs: the one that collects a job first counts the answers it did not
    ask for as well, so the runs' usage adds up to what the vendor billed, and none is counted twice."""
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    with FakeOpenAI(answer=lambda req, k: f"{prompt_text(req)}#{k}", batch_polls=10**6) as fake:
        path = tmp_path / "c.sqlite"
        with pytest.raises(ProviderError, match="still running"):  # a job for q0..q5 stays recorded
            batch_run(batch_params(fake, batch_wait_s=0.2, price={"input_per_mtok": 1, "output_per_mtok": 2}), CallCache(path))
        fake.batch_polls = 0
        priced = batch_params(fake, price={"input_per_mtok": 1, "output_per_mtok": 2})
        _, other = batch_run(priced, CallCache(path), k=2)  # asks for q0 and q1 only, and collects the whole job
        results, first = batch_run(priced, CallCache(path))  # the first run again: every answer is in the cache
        assert [r.choices[1].text for r in results] == [f"q{i}#1" for i in range(6)]
        assert fake.hits["POST batches"] == 1 and len(fake.batches["batch_1"]["items"]) == 6  # what the vendor billed
        assert (other.calls, other.batch_calls, other.cached, first.calls, first.cached) == (6, 6, 0, 0, 6)
        paid = CallCache(path).paid()
        assert paid["calls"] == other.calls + first.calls == 6
        assert paid["cost_usd"] == pytest.approx(other.cost_usd + first.cost_usd) and paid["cost_usd"] > 0


def test_a_resubmitted_job_lost_again_fails_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    with FakeOpenAI(answer=lambda req, k: "ok", lose_batches=True) as fake:
        with pytest.raises(ProviderError, match=r"unknown to the vendor, and so was batch_1"):
            batch_run(batch_params(fake), CallCache(tmp_path / "c.sqlite"))
        assert fake.hits["POST batches"] == 2  # submitted once more, never a third time
