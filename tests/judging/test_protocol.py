"""The judging protocol: requests carry the schema and n=M; replies parse strictly, a failure is a reason."""

import pytest

from conftest import ROOT
from llamaduo.judging.protocol import SCORE_SCHEMA, parse_judgment, parse_score, parse_verdict, retry_request, single_request

PROMPTS = str(ROOT / "prompts")


@pytest.mark.parametrize("text,finish,err", [
    ('{"reason": "ok", "similarity": 40, "precision": 90}', "stop", None),
    ('{"reason": "ok", "similarity": 40, "precision": 90', "length", "truncated at max_tokens"),
    ("not json", "stop", "not JSON"),
    ("", "stop", "empty reply"),
    ('{"similarity": 140, "precision": 90}', "stop", "`similarity` 140 outside 0-100"),
    ('{"similarity": -1, "precision": 90}', "stop", "`similarity` -1 outside 0-100"),
    ('{"similarity": "high", "precision": 90}', "stop", "`similarity` missing or not a number"),
    ('{"similarity": true, "precision": 90}', "stop", "`similarity` missing or not a number"),
    ('{"precision": 90}', "stop", "`similarity` missing or not a number"),
    ('[1]', "stop", "not a JSON object"),
    ("", "refusal", "refused"),
    ("", "content_filter", "blocked by the provider's content filter"),
])
def test_parse_score(text, finish, err):
    scores, got = parse_score(text, finish)
    if err is None:
        assert got is None and scores == {"similarity": 40.0, "precision": 90.0}
        assert parse_judgment(text, finish) == ({"similarity": 40.0, "precision": 90.0, "reason": "ok"}, None)
    else:
        assert scores is None and got.startswith(err)


def test_a_refusal_is_a_failure_with_its_message_even_with_text():
    scores, err = parse_score('{"similarity": 1, "precision": 1}', "stop", refusal="I can't grade this.")
    assert scores is None and err == "refused (I can't grade this.)"


@pytest.mark.parametrize("text,want", [
    ('{"reason": "r", "winner": "A"}', "A"), ('{"reason": "r", "winner": "b"}', "B"),
    ('{"reason": "r", "winner": "Tie"}', "tie"), ('{"reason": "r", "winner": "C"}', None),
    ('{"reason": "r"}', None), ("A", None),
])
def test_parse_verdict(text, want):
    v, err = parse_verdict(text, "stop")
    assert (v["winner"] if v else None) == want and (err is None) == (want is not None)


def test_a_grading_request_asks_m_judgments_in_one_call_with_the_schema():
    req = single_request("Summarize X.", "X in short.", "My answer.", m=3, temperature=0.7, max_tokens=80, prompt_dir=PROMPTS)
    ((role, text),) = req.messages
    assert role == "user" and req.n == 3 and req.json_schema == SCORE_SCHEMA and req.schema_name == "grade"
    assert "Summarize X." in text and "X in short." in text and "My answer." in text


def test_a_reask_names_the_cause_and_is_a_request_of_its_own():
    req = single_request("Summarize X.", "X in short.", "My answer.", m=3, temperature=0.7, max_tokens=80, prompt_dir=PROMPTS)
    again = retry_request(req, "not JSON (Expecting value at char 0)", 2, 1, prompt_dir=PROMPTS)
    ((_, text),) = again.messages
    assert again.n == 2 and "not JSON (Expecting value at char 0)" in text and "My answer." in text
    assert again.key_material() != req.key_material()  # the cache must not hand back the unusable reply
    assert retry_request(req, "x", 2, 2, prompt_dir=PROMPTS).key_material() != again.key_material()


# ---- the instruction's context (system prompt, earlier turns) in the judge's prompt ------------------------------

CONTEXT_ROW = {"id": "q", "instruction": "Name your ship.", "response": "The Gull.", "system": "You are a terse pirate.",
               "history": [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A pirate."}]}


def test_a_single_turn_prompt_is_byte_identical_to_the_one_before_the_context_slot():
    """Cached judgments stay valid: the sha256 is of the text the template gave before it had `$context`."""
    import hashlib

    from llamaduo.judging.protocol import build_requests, pairwise_request

    row = {"id": "q", "instruction": "Summarize X.", "response": "X in short.", "system": None, "history": None}
    (req,) = build_requests([{"prompt_id": "q", "answer": "My answer."}], {"q": row}, m=3, temperature=0.7, max_tokens=80,
                            prompt_dir=PROMPTS)
    assert hashlib.sha256(req.messages[0][1].encode()).hexdigest() == \
        "06f77085651b60d37b121324e485142f1c42ff58b6fb8cecc75e453f45154e75"
    pair = pairwise_request("Summarize X.", "X in short.", "A.", "B.", temperature=0, max_tokens=9, prompt_dir=PROMPTS)
    assert hashlib.sha256(pair.messages[0][1].encode()).hexdigest() == \
        "f45ab4daeabefe198ad2b7402bbb0ce8773a51119fd5ad97fff80f599091982b"


def test_the_judge_sees_the_system_prompt_and_earlier_turns_before_the_instruction():
    from llamaduo.judging.protocol import build_requests, context_block, pairwise_request

    (req,) = build_requests([{"prompt_id": "q", "answer": "The Gull, arr."}], {"q": CONTEXT_ROW}, m=2, temperature=0,
                            max_tokens=80, prompt_dir=PROMPTS)
    text = req.messages[0][1]
    order = [text.index(s) for s in ("You are a terse pirate.", "Who are you?", "A pirate.", "Instruction:\n<<<\nName your ship.",
                                     "The Gull.", "The Gull, arr.")]
    assert order == sorted(order) and "[system]\nYou are a terse pirate." in text
    ctx = context_block(CONTEXT_ROW, PROMPTS)
    pair = pairwise_request("Name your ship.", "The Gull.", "A.", "B.", temperature=0, max_tokens=9, prompt_dir=PROMPTS,
                            context=ctx)
    assert ctx and ctx in pair.messages[0][1] and pair.messages[0][1].index(ctx) < pair.messages[0][1].index("Instruction:")
    assert context_block({"instruction": "x", "system": None, "history": None}, PROMPTS) == ""
