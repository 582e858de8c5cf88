"""Quality rules: each still fires on the real failure it exists for, none fires on ordinary answers,
and calibration on a task's own human rows loosens or switches off a rule that would drop them."""

import pyarrow as pa
import pytest

from llamaduo.config import CurateParams
from llamaduo.curation import curate, quality
from llamaduo.curation.tokens import tokenize

TRAIN = [{"id": "t1", "task": "summarize", "instruction": "Summarize the train text please.", "response": "Train."}]
TEST = [{"id": "e1", "task": "summarize", "instruction": "Summarize the secret test text.", "response": "Secret summary."}]


def pair(i, ins, res, task="summarize", **extra):
    return {"id": f"s{i}", "task": task, "instruction": ins, "response": res, "seed_id": "x", "provider": "p",
            "model": "m", "request_id": "r", "cycle": 1} | extra


def check(rows, overrides=None, **params):
    """The first failing rule per (instruction, response[, task]) row, no calibration unless overrides."""
    ins = pa.array([r[0] for r in rows], type=pa.large_string())
    res = pa.array([r[1] for r in rows], type=pa.large_string())
    tasks = [r[2] if len(r) > 2 else "summarize" for r in rows]
    p = CurateParams(**params)
    return list(quality.check(quality.values(ins, res, tokenize(ins, res), p), tasks, overrides or {}, p))


def test_quality_rules_each_counted():
    raw = [pair(1, "too short", "ok"), pair(2, "A long enough instruction", ""),
           pair(3, "Please repeat after me now", "Please repeat after me now, thanks"),
           pair(4, "Write a poem about rain", "I'm sorry, but I cannot help with that."),
           pair(5, "Write a poem about snow", '{"pairs": [{"instruction": "x"'),
           pair(6, "Write a poem about wind", "```\nwind\n```"),
           pair(7, "Write a function that adds", "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```", task="coding"),
           pair(8, "Schreibe ein Gedicht über den Regen", " ".join(["Regen fällt leise auf das Dach nieder"] * 3)),
           pair(9, "Write a poem about " + "long " * 50, "ok")]
    p = CurateParams(max_instruction_tokens=40)
    kept, _, counts = curate(raw, train=TRAIN, test=TEST, p=p)
    assert [r["id"] for r in kept] == ["s7"]
    assert counts["dropped"] == {"instruction_too_short": 1, "empty": 1, "copied_instruction": 1, "refusal": 1,
                                 "leftover_markup": 2, "wrong_language": 1, "instruction_too_long": 1}


def test_the_first_failing_rule_is_the_reason():
    # too short AND a refusal: the length rules come first
    assert check([("hi", "I'm sorry, but I cannot do that for you at all.")]) == ["instruction_too_short"]
    assert check([("Write a poem about the sea", "I'm sorry, but I cannot do that.")]) == ["refusal"]


@pytest.mark.parametrize("reply", [
    "I'm sorry, but I can't help with that request.",
    "I’m sorry, but as an AI language model I cannot write content like that.",
    "I apologize, but I am unable to provide instructions for this.",
    "As an AI, I cannot provide medical advice. Please consult a doctor.",
    "Sorry, I won't be able to assist with that.",
    "I cannot help with that.",
    "  **I'm sorry**, but I must decline to write this story.",
])
def test_a_refusal_that_opens_the_reply_is_caught(reply):
    assert check([("Write a short story about a heist", reply)]) == ["refusal"]


@pytest.mark.parametrize("reply", [
    # an apology that does not decline: ordinary advice
    "I'm sorry to hear about your loss. Here are a few ways to cope: talk to friends, rest, and eat well.",
    # a decline that is the answer, not an apology: closed-QA "the text does not say" (a shipped human row)
    "I am unable to provide the answer to that question as the information is not included in the text which was provided.",
    # the words of a refusal, further into an ordinary answer
    "The knight rode on through the night, and at dawn he said: I'm sorry, I cannot help you, and rode away.",
    "Sure! I can't wait to help. Here is the list you asked for: apples, pears, plums.",
])
def test_ordinary_answers_are_not_refusals(reply):
    assert check([("Write a short story about a knight", reply)]) == [None]


def test_a_refusal_declines_within_the_window():
    late = "I'm sorry it took a while. " + "Here is the plan in detail. " * 10 + "I cannot help with the rest."
    assert check([("Plan a trip to Rome for me", late)]) == [None]
    assert check([("Plan a trip to Rome for me", late)], refusal_window_chars=400) == ["refusal"]


@pytest.mark.parametrize("field,text", [
    ("response", '{"instruction": "Summarize this", "response": "A summary."}'),
    ("response", '[{"answer": "Paris", "confidence": 0.9}]'),
    ("response", "```json\n{\"answer\": \"Paris\"}\n```"),
    ("response", "```\nThe capital of France is Paris.\n```"),
    ("response", 'The answer is Paris.", "response": "Paris'),
    ("instruction", '{"pairs": [{"instruction": "What is the capital of France?"'),
])
def test_structured_output_leftovers_are_caught(field, text):
    row = ("What is the capital of France?", text) if field == "response" else (text, "Paris is the capital of France.")
    assert check([row]) == ["leftover_markup"]


@pytest.mark.parametrize("reply", [
    "Use a list comprehension:\n\n```python\nsquares = [x * x for x in range(10)]\n```\n\nIt builds the list in one pass.",
    "Here is the fixed code:\n```js\nconst x = {a: 1};\n```\nand a second block:\n```js\nconsole.log(x);\n```",
    "```python\nprint(1)\n```\nThis prints 1.",
    "The set {1, 2, 3} has three elements, written {1, 2, 3}",
    "{a} and {b} are placeholders in the template {a}{b}",
])
def test_code_blocks_and_braces_inside_an_answer_are_not_leftovers(reply):
    assert check([("How do I make a list of squares in Python?", reply, "coding")]) == [None]


def test_copied_instruction_needs_the_response_to_be_the_copy():
    # an echo, with or without a short lead-in, is a copy
    assert check([("Describe the water cycle in three sentences", "Describe the water cycle in three sentences.")]) == ["copied_instruction"]
    assert check([("Describe the water cycle in three sentences", "Sure: describe the water cycle in three sentences")]) == ["copied_instruction"]
    # a short instruction the answer restates, then answers, is not (it was with the instruction-only share)
    planets = "The planets in the solar system are Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus and Neptune."
    assert check([("List the planets in the solar system", planets)]) == [None]
    assert check([("List the planets in the solar system", planets)], copy_ratio=None) == [None]


def test_rules_switched_off_pass_everything():
    rows = [("Please repeat after me now", "Please repeat after me now, thanks"), ("Write a poem about wind", "```\nwind\n```"),
            ("Write a poem about the sea", "I'm sorry, but I cannot do that.")]
    assert check(rows) == ["copied_instruction", "leftover_markup", "refusal"]
    assert check(rows, copy_ratio=None, leftover_markup=False, refusal_openers=[]) == [None, None, None]


def test_the_language_rule_judges_long_rows_only():
    german = " ".join(["Regen fällt leise auf das Dach nieder"] * 3)
    assert check([("Schreibe ein Gedicht", german)]) == ["wrong_language"]
    assert check([("Schreibe ein Gedicht", german)], language_min_tokens=100) == [None]
    assert check([("Schreibe ein Gedicht", german)], min_stopword_ratio=None) == [None]
    assert check([("Write a poem about the rain", "The rain falls softly on the roof of the old house.")]) == [None]


def test_bad_refusal_regex_names_the_key():
    with pytest.raises(ValueError, match="refusal_declines"):
        CurateParams(refusal_declines=["(unclosed"])


# ---- calibration --------------------------------------------------------------------------------------------

def human(task, n, odd=0, odd_response="```\nprint('hi')\n```"):
    """n coverage train rows of a task, the first `odd` of them answering in a way a rule flags."""
    return [{"id": f"{task}{k}", "task": task, "instruction": f"Question number {k} about the {task} topic here",
             "response": odd_response if k < odd else f"An ordinary answer number {k} about the {task} topic."}
            for k in range(n)]


def test_a_rule_that_drops_the_tasks_own_rows_is_off_for_that_task_only():
    # 3 of 100 human coding answers are one fenced block: > 1%, so the fence leftover rule is off for coding
    train = human("coding", 100, odd=3) + human("summarize", 100, odd=1)
    raw = [pair(1, "Print hello in Python please", "```\nprint('hello')\n```", task="coding"),
           pair(2, "Summarize the text in one line", "```\nA one-line summary.\n```", task="summarize"),
           pair(3, "Summarize the other text for me", '{"response": "x"}', task="coding")]
    kept, dropped, counts = curate(raw, train=train, test=[], p=CurateParams())
    assert [r["id"] for r in kept] == ["s1", "s3"]  # coding: rule off entirely (the JSON one too, as the rule is one)
    assert [(d["id"], d["reason"]) for d in dropped] == [("s2", "leftover_markup")]  # summarize: 1 of 100 is allowed
    cal = counts["calibration"]["tasks"]
    assert counts["calibration"]["max_coverage_drop"] == 0.01
    assert cal["coding"]["would_drop"] == {"leftover_markup": 3} and cal["coding"]["allowed_drops"] == 1
    assert cal["coding"]["adjusted"]["leftover_markup"]["value"] == "off"
    assert "3 of 100 'coding' coverage train rows (3.0%)" in cal["coding"]["adjusted"]["leftover_markup"]["why"]
    assert cal["summarize"]["would_drop"] == {"leftover_markup": 1} and cal["summarize"]["adjusted"] == {}
    # with a looser budget nothing is adjusted, and the coding rows are dropped again
    kept, _, counts = curate(raw, train=train, test=[], p=CurateParams(max_coverage_drop=0.05))
    assert [r["id"] for r in kept] == [] and counts["calibration"]["tasks"]["coding"]["adjusted"] == {}


def test_a_numeric_rule_moves_to_the_tasks_own_quantile():
    # human classify rows of 20+ tokens: 3 answers are label lists with 0, 1, 2 function words, 97 are prose
    labels = " ".join(["Positive, Negative, Neutral, Mixed, Positive"] * 6)
    train = [{"id": f"c{k}", "task": "classify", "instruction": "Label each review below",
              "response": labels + " the" * k if k < 3 else f"The review number {k} is positive because the reader liked it."}
             for k in range(100)]
    p = CurateParams()
    ins = pa.array([r["instruction"] for r in train], type=pa.large_string())
    res = pa.array([r["response"] for r in train], type=pa.large_string())
    vals = quality.values(ins, res, tokenize(ins, res), p)
    overrides, report = quality.calibrate(vals, [r["task"] for r in train], p)
    # 3 rows fail at 0.05 and 1 may: the threshold becomes the 2nd smallest share, so only the smallest fails
    assert overrides == {"classify": {"wrong_language": 1 / 35}}
    adjusted = report["classify"]["adjusted"]["wrong_language"]
    assert (adjusted["param"], adjusted["default"], adjusted["value"]) == ("min_stopword_ratio", 0.05, 1 / 35)
    fails = quality.check(vals, [r["task"] for r in train], overrides, p)
    assert [k for k, x in enumerate(fails) if x is not None] == [0]
    # only classify is loosened: a label list with one function word passes there, not in summarize
    colours = " ".join(["Red, Green, Blue, Yellow, Orange"] * 6) + " the"
    raw = [pair(1, "Label each flower here", colours, task="classify"), pair(2, "Label every flower here", colours, task="summarize")]
    kept, dropped, _ = curate(raw, train=train, test=[], p=p)
    assert [r["id"] for r in kept] == ["s1"] and [d["reason"] for d in dropped] == ["wrong_language"]


def test_copy_threshold_past_one_switches_the_rule_off():
    train = [{"id": f"x{k}", "task": "rewrite", "instruction": f"Fix the typo in line {k}: teh cat sat",
              "response": f"Fix the typo in line {k}: the cat sat"} for k in range(5)]
    p = CurateParams()
    ins = pa.array([r["instruction"] for r in train], type=pa.large_string())
    res = pa.array([r["response"] for r in train], type=pa.large_string())
    overrides, report = quality.calibrate(quality.values(ins, res, tokenize(ins, res), p), ["rewrite"] * 5, p)
    assert report["rewrite"]["would_drop"] == {"copied_instruction": 5}
    assert overrides["rewrite"]["copied_instruction"] is None or overrides["rewrite"]["copied_instruction"] > 0.8


def test_the_report_shows_examples_per_reason():
    raw = [pair(k, f"Write a poem about the number {k}", "I'm sorry, but I cannot write that poem.") for k in range(5)]
    raw += [pair(9, "Write a poem about the sea", '{"response": "waves"}')]
    _, dropped, counts = curate(raw, train=TRAIN, test=TEST, p=CurateParams(report_examples=2))
    ex = counts["examples"]
    assert sorted(ex) == ["leftover_markup", "refusal"]
    assert [e["id"] for e in ex["refusal"]] == ["s0", "s1"]
    assert ex["refusal"][0]["matched"] == "refusal: opens with \"I'm sorry\", declines with 'I cannot write'"
    assert ex["leftover_markup"][0]["matched"] == "leftover_markup: schema key '\"response\": \"' in the response"
    assert ex["refusal"][0]["response"] == "I'm sorry, but I cannot write that poem."
    # every column passes through to the dropped rows, extra ones too (e.g. a later `system` column)
    extra = pair(20, "Write a poem about the moon", "I'm sorry, but I cannot help with that.", system="Be brief.", history=[])
    _, dropped, _ = curate([extra], train=TRAIN, test=TEST, p=CurateParams())
    assert dropped[0] == extra | {"reason": "refusal"}
