import pytest

from llamaduo.judging import build_requests, judgment_rows, parse_score
from llamaduo.metrics import summarize
from llamaduo.providers.base import ChatResult, Choice
from conftest import ROOT


@pytest.mark.parametrize("text,finish,err", [
    ('{"reason": "ok", "similarity": 40, "precision": 90}', "stop", None),
    ('{"reason": "ok", "similarity": 40, "precision": 90', "length", "truncated at max_tokens"),
    ("not json", "stop", "not JSON"),
    ('{"similarity": 140, "precision": 90}', "stop", "`similarity` 140 outside 0-100"),
    ('{"similarity": "high", "precision": 90}', "stop", "`similarity` missing or not a number"),
    ('{"similarity": true, "precision": 90}', "stop", "`similarity` missing or not a number"),
    ('[1]', "stop", "not a JSON object"),
])
def test_parse_score(text, finish, err):
    scores, got = parse_score(text, finish)
    if err is None:
        assert got is None and scores == {"similarity": 40.0, "precision": 90.0}
    else:
        assert scores is None and got.startswith(err)


def J(pid, sample, prec, sim, ok=True, error=None):
    return {"prompt_id": pid, "task": "t", "sample": sample, "ok": ok, "precision": prec, "similarity": sim, "error": error}


def test_metrics_match_hand_computation():
    js = [
        J("a", 0, 80, 40), J("a", 0, 60, 60),      # V = 70 / 50
        J("a", 1, 30, 90), J("a", 1, None, None, ok=False, error="not JSON (x)"),  # V = 30 / 90 (failure excluded)
        J("b", 0, 50, 10), J("b", 0, 50, 20),      # V = 50 / 15
        J("b", 1, None, None, ok=False, error="not JSON (y)"),  # no valid judgment: left out, not zero
    ]
    s = summarize(js, [50, 70])
    assert s["answers"] == 4 and s["judgments"] == 7 and s["failed_judgments"] == 2
    assert s["failure_reasons"] == {"not JSON": 2}
    assert s["precision"] == {"scored_answers": 3, "mean": 50.0, "coverage_50": round(2 / 3, 4), "coverage_70": round(1 / 3, 4)}
    assert s["similarity"]["mean"] == round((50 + 90 + 15) / 3, 3)
    assert s["similarity"]["coverage_50"] == round(2 / 3, 4) and s["similarity"]["coverage_70"] == round(1 / 3, 4)


def test_all_failed_gives_none_not_zero():
    s = summarize([J("a", 0, None, None, ok=False, error="not JSON")], [50])
    assert s["precision"]["mean"] is None and s["precision"]["coverage_50"] is None


def test_requests_and_rows_carry_the_judge_record():
    responses = [{"prompt_id": "a", "task": "t", "sample": 0, "answer": "The answer."}]
    test = {"a": {"id": "a", "instruction": "Do it.", "response": "Reference."}}
    (req,) = build_requests(responses, test, m=3, temperature=0.5, max_tokens=50, prompt_dir=str(ROOT / "prompts"))
    text = req.messages[0][1]
    assert req.n == 3 and "Do it." in text and "Reference." in text and "The answer." in text
    res = ChatResult([Choice('{"reason": "r", "similarity": 10, "precision": 20}', "stop"), Choice("bad", "stop")])
    rows = judgment_rows(responses, [res], judge="local", judge_model="models/base", prompt_dir=str(ROOT / "prompts"))
    assert [r["ok"] for r in rows] == [True, False] and [r["repeat"] for r in rows] == [0, 1]
    assert rows[0]["precision"] == 20 and rows[1]["precision"] is None and len(rows[0]["prompt_sha"]) == 12
