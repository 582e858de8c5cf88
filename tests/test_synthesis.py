import json

from llamaduo.synthesis import parse_pairs, plan_requests
from conftest import ROOT

TRAIN = [{"id": f"t{i}", "task": "summarize", "instruction": f"Summarize text {i}", "response": f"Summary {i}"} for i in range(5)]


def plans(n, **kw):
    args = dict(pairs_per_request=3, topics=["a", "b"], seed=7, temperature=0.8, max_tokens=100, prompt_dir=str(ROOT / "prompts"))
    return plan_requests(TRAIN, n_requests=n, **(args | kw))


def test_larger_budget_extends_the_same_sequence():
    small, large = plans(4), plans(9)
    assert [p.request for p in small] == [p.request for p in large[:4]]
    assert [p.request_id for p in small] == [p.request_id for p in large[:4]]


def test_seeds_drawn_without_replacement_until_exhausted():
    ps = plans(10)
    assert sorted(p.seed["id"] for p in ps[:5]) == [r["id"] for r in TRAIN]
    assert sorted(p.seed["id"] for p in ps[5:]) == [r["id"] for r in TRAIN]


def test_request_shows_the_seed_and_asks_structured_output():
    p = plans(1)[0]
    text = p.request.messages[0][1]
    assert p.seed["instruction"] in text and p.seed["response"] in text and "3" in text
    assert p.request.json_schema["required"] == ["pairs"]


def test_task_without_template_uses_default():
    rows = [dict(TRAIN[0], task="coding")]
    p = plan_requests(rows, n_requests=1, pairs_per_request=2, topics=["x"], seed=0, temperature=0.5, max_tokens=10,
                      prompt_dir=str(ROOT / "prompts"))[0]
    assert "summarizes text" not in p.request.messages[0][1]


def test_parse_pairs():
    good = json.dumps({"pairs": [{"instruction": " a ", "response": "b"}, {"instruction": 3}]})
    assert parse_pairs(good) == ([{"instruction": "a", "response": "b"}], None)
    assert parse_pairs("{oops")[1].startswith("not JSON")
    assert parse_pairs('{"items": []}') == ([], "no `pairs` list")
    assert parse_pairs('{"pairs": [{"instruction": 1, "response": 2}]}')[1].startswith("pairs without")
