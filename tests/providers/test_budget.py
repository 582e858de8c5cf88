"""The spending cap (`loop.max_cost_usd`) inside a stage: the engine stops before the call that could cross it,
what was paid stays cached, and a rerun with a higher cap pays only for the rest. Against the loopback fakes
with the vendors' real SDKs."""

import json
import sqlite3

import pytest

from fakes.judge_server import JudgeFake
from fakes.openai_server import FakeOpenAI
from fakes.server import prompt_text
from llamaduo.budget import Budget
from llamaduo.config import ProviderParams
from llamaduo.providers import ChatRequest, ProviderError, get_provider
from llamaduo.providers.cache import CallCache
from llamaduo.providers.engine import run_calls

# $0.001 a token either way. The fake bills 10 prompt tokens and 5 per sample: a call costs $0.015. Before it is
# sent, "q3" (2 bytes, one message: at most 2 + 8 + 8 prompt tokens) with max_tokens 20 could cost up to
# (18 + 20) x $0.001 = $0.038
PRICE = {"input_per_mtok": 1000.0, "output_per_mtok": 1000.0}


def reqs(k):
    return [ChatRequest(messages=(("user", f"q{i}"),), temperature=0.5, max_tokens=20, n=1) for i in range(k)]


def cap(usd):
    return Budget(usd, 0.0, "loop.max_cost_usd", "the loop started")


def test_a_budget_stops_the_run_before_the_call_that_could_cross_it(tmp_path):
    path = tmp_path / "calls.sqlite"
    with FakeOpenAI(answer=lambda req, i: f"{prompt_text(req)}!") as fake:
        p = get_provider("svc", ProviderParams(kind="openai_compatible", model="m", base_url=fake.base_url,
                                               concurrency=1, price=PRICE))
        # paid 0, .015, .030, .045, .060: the 5th call could reach .060 + .038 = .098 > .09, so 4 are paid
        with pytest.raises(ProviderError, match=r"3 of 7 t call\(s\) failed \(4 answered and cached.*`loop\.max_cost_usd` "
                                                r"is \$0\.09: \$0\.0600 paid since the loop started, and the next 1 call\(s\) "
                                                r"could cost up to \$0\.0380; not sent"):
            run_calls(p, reqs(7), cache=CallCache(path, budget=cap(0.09)), desc="t")
        assert len(fake.requests) == 4
        cache = CallCache(path)
        assert cache.paid() == {"calls": 4, "cost_usd": pytest.approx(0.06), "input_tokens": 40, "output_tokens": 20}

        # a higher cap: the 4 paid answers come from the cache, only the other 3 are paid
        results, usage = run_calls(p, reqs(7), cache=CallCache(path, budget=cap(0.2)), desc="t")
        assert [r.choices[0].text for r in results] == [f"q{i}!" for i in range(7)]
        assert len(fake.requests) == 7 and usage.calls == 3 and usage.cached == 4
        assert usage.cost_usd == pytest.approx(0.045) and cache.paid()["cost_usd"] == pytest.approx(0.105)


def test_what_was_paid_since_the_loop_started_counts(tmp_path):
    path = tmp_path / "calls.sqlite"
    with FakeOpenAI(answer=lambda req, i: "ok") as fake:
        p = get_provider("svc", ProviderParams(kind="openai_compatible", model="m", base_url=fake.base_url,
                                               concurrency=1, price=PRICE))
        run_calls(p, reqs(2), cache=CallCache(path), desc="t")  # $0.03 paid
        # counted from the start: .03 + .038 > .06, so nothing is sent
        with pytest.raises(ProviderError, match=r"\$0\.0300 paid since the loop started, and the next 1 call"):
            run_calls(p, reqs(6), cache=CallCache(path, budget=cap(0.06)), desc="t")
        assert len(fake.requests) == 2
        # a loop started after those calls: .000 and .015 leave room, .030 + .038 does not
        later = Budget(0.06, 1e12, "loop.max_cost_usd", "the loop started")
        with pytest.raises(ProviderError, match=r"2 of 6 t call\(s\) failed \(2 answered"):
            run_calls(p, reqs(6), cache=CallCache(path, budget=later), desc="t")
        assert len(fake.requests) == 4


def test_a_batch_job_that_could_cross_the_budget_is_not_submitted(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k-openai")
    path = tmp_path / "calls.sqlite"
    with FakeOpenAI(answer=lambda req, k: json.dumps({"a": f"{prompt_text(req)}#{k}"})) as fake:
        params = ProviderParams(kind="openai", model="m-1", base_url=fake.base_url, batch=True, batch_poll_s=0.05,
                                batch_max_requests=3, price=PRICE)
        # at the batch factor 0.5 a job of 3 calls could cost up to 3 x .019 = .057: the first fits .1, the second not
        with pytest.raises(ProviderError, match=r"3 of 6 t call\(s\) failed \(3 answered.*`loop\.max_cost_usd` is \$0\.1: "
                                                r"\$0\.0000 paid since the loop started, \$0\.0570 held by calls under way, "
                                                r"and the next 3 call\(s\) could cost up to \$0\.0570"):
            run_calls(get_provider("svc", params), reqs(6), cache=CallCache(path, budget=cap(0.1)), desc="t")
        assert fake.hits["POST batches"] == 1
        cache = CallCache(path)
        assert cache.paid() == {"calls": 3, "cost_usd": pytest.approx(3 * 0.0075), "input_tokens": 30, "output_tokens": 15}
        with sqlite3.connect(path) as db:  # the job not submitted left no submission to look up at the vendor
            assert db.execute("SELECT COUNT(*) FROM batch_submissions").fetchone()[0] == 0

        _, usage = run_calls(get_provider("svc", params), reqs(6), cache=CallCache(path, budget=cap(0.2)), desc="t")
        assert fake.hits["POST batches"] == 2 and usage.batch_calls == 3 and usage.cached == 3


# -- a stage as the loop runs it: the cap from params (`loop.max_cost_usd`) over the loop under way (.llamaduo/loop.json)

TEST = [{"id": f"p{i}", "task": "summarize", "instruction": f"Summarize note {i}.", "response": f"Note {i}.",
         "category": "Summarize", "split": "test"} for i in range(3)]


def judge_or_answer(body, k):
    if body.get("response_format"):  # a judgment: 6 words, billed as 6 tokens
        return json.dumps({"reason": "close", "similarity": 60, "precision": 80})
    return f"Service summary of {body['messages'][-1]['content']}"  # 6 words


def stage_project(tmp_path, base_url, cap_usd):
    import shutil
    import time

    import yaml

    from conftest import ROOT
    from llamaduo import tables

    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "prompts", proj / "prompts")
    (proj / "params.yaml").write_text(yaml.safe_dump({
        # output at $0.001 a token, input free: a judge call (n=2, max_tokens 200) could cost up to $0.40
        "providers": {"fake": {"kind": "openai_compatible", "model": "fake-judge", "base_url": base_url, "concurrency": 1,
                               "max_retries": 0, "price": {"input_per_mtok": 0.0, "output_per_mtok": 1000.0}}},
        "synth": {"provider": "fake"}, "cache": {"path": str(tmp_path / "calls.sqlite")},
        "judge": {"provider": "fake", "m": 2, "retries": 0, "bootstrap": 100, "max_tokens": 200},
        "loop": {"max_cost_usd": cap_usd}}))
    tables.write(proj / "test.parquet", "split", TEST)
    (proj / ".llamaduo").mkdir()
    (proj / ".llamaduo" / "loop.json").write_text(json.dumps({"cycle": 0, "stopped_by": None, "started_at": time.time() - 1}))
    return proj


def run_baseline(proj):
    from conftest import run_stage

    return run_stage("baseline.py", "--test", "test.parquet", "--responses-out", "b_resp.parquet",
                     "--judgments-out", "b_judg.parquet", "--metrics-out", "baseline.json", cwd=proj)


def test_the_budget_stops_a_stage_mid_way_and_a_higher_one_finishes_it_from_the_cache(tmp_path):
    import yaml

    from fakes.judge_server import count_tokens
    from llamaduo.config import load_params
    from llamaduo.cycle import cost

    with JudgeFake(answer=judge_or_answer) as fake:
        proj = stage_project(tmp_path, fake.base_url, 0.425)
        # 3 answers (6 tokens each: $0.018), then judge calls of 12 tokens ($0.012): the first could reach
        # .018 + .40 = .418, within .425; the second .030 + .40 = .430, over it
        res = run_baseline(proj)
        assert res.returncode == 2, res.stderr[-2000:]
        assert ("2 of 3 judge" in res.stderr and "`loop.max_cost_usd` is $0.425: $0.0300 paid since the loop started, "
                "and the next 1 call(s) could cost up to $0.4000; not sent" in res.stderr), res.stderr[-2000:]
        assert not list(proj.glob("b_*.parquet")) and not (proj / "baseline.json").exists()  # no partial outputs
        cache = CallCache(tmp_path / "calls.sqlite")
        assert cache.paid() == {"calls": 4, "cost_usd": pytest.approx(0.030), "input_tokens": fake.billed_input,
                                "output_tokens": 30}
        assert len(fake.requests) == 4

        params = yaml.safe_load((proj / "params.yaml").read_text())
        params["loop"]["max_cost_usd"] = 1.0
        (proj / "params.yaml").write_text(yaml.safe_dump(params))
        res = run_baseline(proj)
        assert res.returncode == 0, res.stderr[-2000:]
        assert len(fake.requests) == 6 and cache.paid()["calls"] == 6  # only the 2 judge calls not sent before
        first = json.loads((proj / "baseline.json").read_text())
        answers, judging = first["usage"]["answers"]["fake"], first["usage"]["judging"]["fake"]
        assert (answers["calls"], answers["cached"], judging["calls"], judging["cached"]) == (0, 3, 2, 1)

        # tokens per request from every answer, cached or not: what the fake billed for the 3 answers
        billed = [b for b in fake.requests if not b.get("response_format")]
        prompt_tokens = sum(count_tokens(m["content"]) for b in billed for m in b["messages"])
        assert (answers["answered_input_tokens"], answers["answered_output_tokens"]) == (prompt_tokens, 18)
        assert answers["input_tokens"] == 0  # none paid in this run
        assert cost.service_tokens_per_request(first, "fake") == (prompt_tokens / 3, 6.0)

        res = run_baseline(proj)  # a rerun from a warm cache measures the same, and reaches the same break-even
        assert res.returncode == 0 and len(fake.requests) == 6
        again = json.loads((proj / "baseline.json").read_text())
        assert again["usage"]["answers"]["fake"] == answers
        p = load_params(proj / "params.yaml")
        reports = [cost.write(params=p, baseline=b, loop_cost_usd=0.0, json_out=tmp_path / f"cost{i}.json",
                              plot_out=tmp_path / f"cost{i}.png") for i, b in enumerate((first, again))]
        assert reports[0]["service_usd_per_request"] == pytest.approx(18 / 3 * 1000 / 1e6) and reports[0] == reports[1]


def test_the_reserve_counts_a_token_per_byte_which_no_byte_level_tokenizer_exceeds():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from llamaduo.usage import cost_bound

    def req(text, schema=None):
        return ChatRequest(messages=(("system", "Be brief."), ("user", text)), temperature=0.0, max_tokens=10,
                           json_schema=schema)

    # text bytes + 8 a message + 8 for the reply
    assert req("q3").input_token_bound() == 9 + 2 + 2 * 8 + 8
    prose, cjk, code = "Summarize the note in one line.", "请用一句话总结这段文字。", "x[0x1f]=0xff;y={'k':[1,2,3]}"
    assert req(cjk).input_token_bound() == 9 + len(cjk.encode()) + 24 == 69  # 3 bytes a character
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert req("q3", schema).input_token_bound() == req("q3").input_token_bound() + len(json.dumps(schema))
    # the reserve prices that bound: 18 prompt tokens and 2 x 10 output tokens at $0.001 each
    assert cost_bound(ProviderParams(kind="openai_compatible", model="m", base_url="http://127.0.0.1:9/v1", price=PRICE).price,
                      ChatRequest(messages=(("user", "q3"),), temperature=0.5, max_tokens=10, n=2), batch=False) == \
        pytest.approx((2 + 16 + 20) / 1000)

    # a byte-level BPE (the kind OpenAI's and Llama's tokenizers are) trained here on English: the other texts fall
    # apart into bytes, and 4 characters a token undercounts them, the bound does not
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator([prose] * 50, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    for text in (prose, cjk, code):
        tokens = len(bpe.encode("Be brief.").ids) + len(bpe.encode(text).ids)
        assert tokens <= req(text).input_token_bound() - 24
    assert len(bpe.encode(cjk).ids) > req(cjk).estimated_input_tokens()  # what the reserve counted before
