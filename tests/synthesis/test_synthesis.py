import json

from conftest import ROOT
from llamaduo.synthesis import parse_pairs, plan_requests

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
    rows = [dict(TRAIN[0], task="translate")]
    p = plan_requests(rows, n_requests=1, pairs_per_request=2, topics=["x"], seed=0, temperature=0.5, max_tokens=10,
                      prompt_dir=str(ROOT / "prompts"))[0]
    assert "summarizes text" not in p.request.messages[0][1]


def test_parse_pairs():
    good = json.dumps({"pairs": [{"instruction": " a ", "response": "b"}, {"instruction": 3}]})
    assert parse_pairs(good) == ([{"instruction": "a", "response": "b"}], None)
    assert parse_pairs("{oops")[1].startswith("not JSON")
    assert parse_pairs('{"items": []}') == ([], "no `pairs` list")
    assert parse_pairs('{"pairs": [{"instruction": 1, "response": 2}]}')[1].startswith("pairs without")


# ---- end to end against a loopback OpenAI-compatible fake ------------------------------------------------------

import hashlib as _hashlib  # noqa: E402

import pytest  # noqa: E402

from fakes.openai_server import FakeOpenAI  # noqa: E402
from llamaduo.config import Params  # noqa: E402
from llamaduo.providers import open_providers  # noqa: E402
from llamaduo.providers.cache import CallCache  # noqa: E402
from llamaduo.synthesis import synthesize as synthesize_with  # noqa: E402

NOUNS = "river mountain engine garden letter window market doctor planet castle violin pepper silver harbor".split()


def distinct_pairs(req, i, k=3):
    """k pairs that differ from every other request's (keyed by the prompt), plus one duplicate per answer."""
    h = _hashlib.sha256(req["messages"][0]["content"].encode()).hexdigest()
    pairs = [{"instruction": f"Explain the {NOUNS[int(h[j], 16) % len(NOUNS)]} code {h[j * 4:j * 4 + 8]} clearly",
              "response": f"It is item {h[j * 4:j * 4 + 8]}."} for j in range(k)]
    return json.dumps({"pairs": pairs + [dict(pairs[0])]})


def params(tmp_path, url, **synth):
    return Params.model_validate({
        "providers": {"fake": {"kind": "openai_compatible", "base_url": url, "model": "fake-model", "concurrency": 4}},
        "cache": {"path": str(tmp_path / "calls.sqlite")},
        "synth": {"provider": "fake", "pairs_per_request": 4, "max_requests": 50, **synth},
        "judge": {"provider": "fake"},
    })


def synthesize(*, train, test, params):
    """The synthesize stage's call, with the provider and cache it opens."""
    with CallCache(params.cache.path) as cache, open_providers(params.providers, [params.synth.provider]) as providers:
        return synthesize_with(train=train, test=test, provider=providers[params.synth.provider], cache=cache, synth=params.synth,
                               curate_params=params.curate)


@pytest.fixture
def in_project(monkeypatch):
    monkeypatch.chdir(ROOT)  # prompts/ is read relative to the project folder, as in a stage


def test_volume_counts_curated_pairs_and_growth_pays_only_for_the_rest(tmp_path, in_project, capsys):
    test = [{"id": "e0", "task": "summarize", "instruction": "Summarize nothing at all here.", "response": "Nothing."}]
    with FakeOpenAI(answer=distinct_pairs) as fake:
        rows, stats = synthesize(train=TRAIN, test=test, params=params(tmp_path, fake.base_url, volume=10))
        assert stats["stopped_by"] == "volume" and stats["curated"] == 10
        # 3 distinct pairs per answer (the 4th is a duplicate curation drops): 4 requests give 12 >= 10
        assert stats["requests"] == 4 and len(rows) == 16 and {r["cycle"] for r in rows} == {0}
        assert "reached `synth.volume`" in capsys.readouterr().err
        paid = len(fake.requests)
        p2 = params(tmp_path, fake.base_url, volume=20, cycle=1, previous_volumes=[10])
        rows2, stats2 = synthesize(train=TRAIN, test=test, params=p2)
        assert rows2[:len(rows)] == rows  # the first cycle's rows exactly, with their cycle 0
        assert {r["cycle"] for r in rows2[len(rows):]} == {1}
        assert stats2["curated"] == 20 and stats2["requests"] == 7
        assert stats2["usage"]["cached"] >= 4 and len(fake.requests) == paid + stats2["usage"]["calls"]
        assert stats2["requests_per_cycle"] == {"0": 4, "1": 3}
    lineage = rows2[-1]
    assert lineage["provider"] == "fake" and lineage["model"] == "fake-model" and lineage["seed_id"].startswith("t")
    assert lineage["id"].startswith(lineage["request_id"])


def test_max_requests_stops_and_says_so(tmp_path, in_project, capsys):
    same = lambda req, i: json.dumps({"pairs": [{"instruction": "Always the very same request", "response": "Same."}]})  # noqa: E731
    with FakeOpenAI(answer=same) as fake:
        rows, stats = synthesize(train=TRAIN, test=[], params=params(tmp_path, fake.base_url, volume=5, max_requests=6))
    assert stats["stopped_by"] == "max_requests" and stats["curated"] == 1 and stats["requests"] == 6
    assert "stopped by `synth.max_requests` (6)" in capsys.readouterr().err


def test_previous_volumes_are_checked():
    with pytest.raises(ValueError, match="previous_volumes"):
        Params.model_validate({"synth": {"cycle": 0, "volume": 5, "previous_volumes": [3]}})
    with pytest.raises(ValueError, match="previous_volumes"):
        Params.model_validate({"synth": {"cycle": 2, "volume": 5, "previous_volumes": [4, 3]}})


@pytest.mark.parametrize("task,marker", [("summarize", "summarizes text"), ("classify", "categories"),
                                         ("coding", "programming"), ("closed_qa", "answers questions")])
def test_each_task_has_its_own_template(task, marker):
    rows = [dict(TRAIN[0], task=task)]
    p = plan_requests(rows, n_requests=1, pairs_per_request=2, topics=["x"], seed=0, temperature=0.5, max_tokens=10,
                      prompt_dir=str(ROOT / "prompts"))[0]
    assert marker in p.request.messages[0][1]


# ---- the seed's system prompt: in the request, and kept by the new pairs ------------------------------------------

def test_a_seed_without_system_prompt_gives_the_request_it_always_did():
    """Cached synthesis answers stay valid: the sha256 is of the text the template gave before it had `$system`."""
    rows = [{"id": "t0", "task": "summarize", "instruction": "Summarize text 0", "response": "Summary 0", "system": None}]
    p = plan_requests(rows, n_requests=1, pairs_per_request=3, topics=["a"], seed=0, temperature=0.8, max_tokens=100,
                      prompt_dir=str(ROOT / "prompts"))[0]
    assert _hashlib.sha256(p.request.messages[0][1].encode()).hexdigest() == \
        "108de61891db7d5c9e937bf4d178a7c723d8423af2c3f3ed5fcbcff1edcf190a"


def test_the_seed_system_prompt_is_in_the_request_and_kept_by_the_synthetic_rows():
    from llamaduo.providers.base import ChatResult, Choice
    from llamaduo.synthesis.run import _parse_into

    seed = {"id": "t0", "task": "translate", "instruction": "Say hi", "response": "Ahoy", "system": "You are a terse pirate.",
            "history": [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Me."}]}
    plan = plan_requests([seed], n_requests=1, pairs_per_request=2, topics=["sea"], seed=0, temperature=0.8, max_tokens=100,
                         prompt_dir=str(ROOT / "prompts"))[0]
    ((role, text),) = plan.request.messages
    assert role == "user" and "System prompt:\n<<<\nYou are a terse pirate.\n>>>" in text
    assert text.index("You are a terse pirate.") < text.index("Example request:") and "Who?" not in text  # single-turn pairs
    rows, stats = [], {"failed_answers": 0, "failure_reasons": {}}
    answer = json.dumps({"pairs": [{"instruction": "Say bye", "response": "Arr"}]})

    class Provider:
        name, model = "svc", "m"

    _parse_into(rows, 0, plan, ChatResult([Choice(answer, "stop")]), Provider, stats)
    assert [(r["instruction"], r["system"], r["history"]) for r in rows] == [("Say bye", "You are a terse pirate.", None)]


def test_a_request_the_service_rejects_gives_no_pairs_and_the_stage_goes_on(tmp_path, in_project, capsys):
    test = [{"id": "e0", "task": "summarize", "instruction": "Summarize nothing at all here.", "response": "Nothing."}]
    with FakeOpenAI(answer=distinct_pairs, faults=[("status", 400)]) as fake:
        rows, stats = synthesize(train=TRAIN, test=test, params=params(tmp_path, fake.base_url, volume=10))
        assert stats["failed_requests"] == 1 and stats["failure_reasons"] == {"request failed: HTTP 400": 1}
        assert stats["curated"] == 10 and stats["usage"]["failed"] == 1
        failed_prompt = fake.prompts[0]  # the first to arrive got the 400
        assert all(r["request_id"] for r in rows) and len(rows) >= 12
        # not cached: a rerun asks that request again (and only it)
        sent = len(fake.requests)
        rows2, stats2 = synthesize(train=TRAIN, test=test, params=params(tmp_path, fake.base_url, volume=10))
        assert stats2["failed_requests"] == 0 and fake.prompts[sent:] == [failed_prompt] and stats2["usage"]["calls"] == 1
