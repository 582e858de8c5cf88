import json
from functools import partial

from conftest import ROOT
from fakes.judge_server import JudgeFake
from llamaduo.config import ProviderParams
from llamaduo.judging.grading import JudgeRecord, combine, judgment_rows, pairwise_rows, side
from llamaduo.judging.protocol import build_requests, parse_judgment, retry_request, single_request
from llamaduo.providers import get_provider
from llamaduo.providers.cache import CallCache
from llamaduo.providers.engine import Outcome, ask

PROMPTS = str(ROOT / "prompts")
REASK = partial(retry_request, prompt_dir=PROMPTS)


def test_swap_rule():
    # the verdict, read back to a model name for each order
    assert side("local_first", "A") == "local" and side("service_first", "A") == "service"
    assert side("local_first", "B") == "service" and side("service_first", "B") == "local"
    assert combine("local", "local") == ("win", False)
    assert combine("service", "service") == ("loss", False)
    assert combine("local", "service") == ("tie", True)    # preferred position A both times: a flip, a tie
    assert combine("service", "local") == ("tie", True)
    assert combine("local", "tie") == ("tie", False)       # a win needs both orders
    assert combine("tie", "tie") == ("tie", False)


RECORD = JudgeRecord(judge="j", primary=True, judge_model="gpt-x", judge_version="openai:gpt-x", temperature=0.5,
                     max_tokens=50)


def test_requests_and_rows_carry_the_judge_record():
    responses = [{"prompt_id": "a", "task": "t", "sample": 0, "answer": "The answer."}]
    test = {"a": {"id": "a", "instruction": "Do it.", "response": "Reference."}}
    (req,) = build_requests(responses, test, m=3, temperature=0.5, max_tokens=50, prompt_dir=PROMPTS)
    text = req.messages[0][1]
    assert req.n == 3 and "Do it." in text and "Reference." in text and "The answer." in text
    outcomes = [[Outcome({"precision": 20.0, "similarity": 10.0, "reason": "r"}, None, 1), Outcome(None, "not JSON (x)", 2)]]
    rows = judgment_rows(responses, outcomes, record=RECORD, m=3, prompt_dir=PROMPTS)
    assert [r["ok"] for r in rows] == [True, False] and [r["repeat"] for r in rows] == [0, 1]
    assert rows[0]["precision"] == 20 and rows[0]["reason"] == "r" and rows[1]["precision"] is None
    assert rows[1]["attempts"] == 2 and rows[1]["error"] == "not JSON (x)"
    r = rows[0]
    assert (r["answerer"], r["judge"], r["judge_model"], r["judge_version"], r["temperature"], r["max_tokens"], r["m"]) == \
        ("local", "j", "gpt-x", "openai:gpt-x", 0.5, 50, 3)
    assert len(r["prompt_sha"]) == 12


def test_pairwise_rows_read_both_orders_and_keep_failures():
    pairs = [({"prompt_id": "a", "task": "t", "sample": 0}, {"service": "svc", "sample": 0}),
             ({"prompt_id": "b", "task": "t", "sample": 1}, {"service": "svc", "sample": 0})]
    def v(w):
        return Outcome({"winner": w, "reason": f"because {w}"}, None, 1)

    outcomes = [[v("A")], [v("A")],              # a: local first wins, service first wins -> flip -> tie
                [v("B")], [Outcome(None, "refused (no)", 2)]]
    rows = pairwise_rows(pairs, outcomes, record=RECORD, prompt_dir=PROMPTS)
    assert rows[0]["ok"] and rows[0]["outcome"] == "tie" and rows[0]["flipped"]
    assert rows[0]["local_first"] == "local" and rows[0]["service_first"] == "service"
    assert rows[0]["reason_local_first"] == "because A"
    assert not rows[1]["ok"] and rows[1]["outcome"] is None and rows[1]["error"] == "service first: refused (no)"
    assert rows[1]["attempts"] == 3


def _grader(answer_text_of):
    """A fake judge: the reply is chosen by the answer under judgment (the text after 'Model answer:')."""
    def answer(body, k):
        prompt = body["messages"][-1]["content"]
        return answer_text_of(prompt.split("Model answer:")[1], "could not be used" in prompt, k)
    return answer


def test_unusable_judgments_are_reasked_then_recorded(tmp_path):
    def reply(answer, is_retry, k):
        if "GOOD" in answer:
            return json.dumps({"reason": "fine", "similarity": 60, "precision": 80})
        if "FLAKY" in answer:  # broken the first time, fine when re-asked
            return json.dumps({"reason": "ok now", "similarity": 10, "precision": 20}) if is_retry else "{oops"
        return json.dumps({"reason": "r", "similarity": 150, "precision": 50})  # always out of range
    with JudgeFake(answer=_grader(reply)) as fake:
        provider = get_provider("fake", ProviderParams(kind="openai_compatible", model="m", base_url=fake.base_url,
                                                       max_retries=0))
        reqs = [single_request("I", "R", a, m=2, temperature=0.5, max_tokens=60, prompt_dir=PROMPTS)
                for a in ("GOOD", "FLAKY", "BAD")]
        cache = CallCache(tmp_path / "c.sqlite")
        out, usage = ask(provider, reqs, parse_judgment, retries=2, cache=cache, desc="t", reask=REASK)
        assert [(o.error is None, o.attempts) for o in out[0]] == [(True, 1), (True, 1)]
        assert [(o.value["precision"], o.attempts) for o in out[1]] == [(20.0, 2), (20.0, 2)]
        assert all(o.value is None and o.error == "`similarity` outside 0-100 (150)" and o.attempts == 3 for o in out[2])
        # 3 first calls; FLAKY and BAD re-asked once (n=2 each), BAD once more: 6 calls
        assert len(fake.requests) == 6 and usage.calls == 6
        assert [r["n"] for r in fake.requests[3:]] == [2, 2, 2]
        assert "`similarity` outside 0-100 (150)" in fake.requests[-1]["messages"][0]["content"]
        # a rerun is answered from the cache, re-asks included
        out2, usage2 = ask(provider, reqs, parse_judgment, retries=2, cache=cache, desc="t", reask=REASK)
        assert usage2.calls == 0 and len(fake.requests) == 6
        assert [[o.error for o in s] for s in out2] == [[o.error for o in s] for s in out]
        cache.close()


def test_a_call_rejected_for_good_is_a_failed_row_with_its_reason():
    """The call engine returns a 400 (a prompt past the judge's context) as Outcomes with `error` set: failed rows
    keeping the provider's words, never a score, for every repeat and for the pairwise comparison."""
    err = "request failed: provider `j` (model m): HTTP 400: maximum context length is 8192 tokens; you asked 9000"
    responses = [{"prompt_id": "a", "task": "t", "sample": 0, "answer": "x"}]
    rows = judgment_rows(responses, [[Outcome(None, err, 1, call_failed=True)] * 2], record=RECORD, m=2, prompt_dir=PROMPTS)
    assert [(r["ok"], r["precision"], r["similarity"], r["reason"], r["error"], r["attempts"]) for r in rows] == \
        [(False, None, None, None, err, 1)] * 2
    pair = [({"prompt_id": "a", "task": "t", "sample": 0}, {"service": "svc", "sample": 0})]
    (row,) = pairwise_rows(pair, [[Outcome(None, err, 1, call_failed=True)],
                                  [Outcome({"winner": "A", "reason": "r"}, None, 1)]], record=RECORD, prompt_dir=PROMPTS)
    assert not row["ok"] and row["outcome"] is None and row["error"] == f"local first: {err}"
