"""Quality rules, each on rows built to fail it, and the first failing rule named."""

import numpy as np
import pyarrow as pa

from llamaduo.config import CurateParams
from llamaduo.curation import curate, quality
from llamaduo.curation.tokens import tokenize

TRAIN = [{"id": "t1", "task": "summarize", "instruction": "Summarize the train text please.", "response": "Train."}]
TEST = [{"id": "e1", "task": "summarize", "instruction": "Summarize the secret test text.", "response": "Secret summary."}]


def pair(i, ins, res, task="summarize"):
    return {"id": f"s{i}", "task": task, "instruction": ins, "response": res, "seed_id": "x", "provider": "p",
            "model": "m", "request_id": "r", "cycle": 1}


def check(rows, **params):
    ins = pa.array([r[0] for r in rows], type=pa.large_string())
    res = pa.array([r[1] for r in rows], type=pa.large_string())
    tasks = [r[2] if len(r) > 2 else "summarize" for r in rows]
    return list(quality.check(ins, res, tasks, tokenize(ins, res), CurateParams(**params)))


def test_quality_rules_each_counted():
    raw = [pair(1, "too short", "ok"), pair(2, "A long enough instruction", ""),
           pair(3, "Please repeat after me now", "Please repeat after me now, thanks"),
           pair(4, "Write a poem about rain", "I'm sorry, but I cannot help with that."),
           pair(5, "Write a poem about snow", '{"pairs": [{"instruction": "x"'),
           pair(6, "Write a poem about wind", "```\nwind\n```"),
           pair(7, "Write a function that adds", "```python\ndef add(a, b):\n    return a + b\n```", task="coding"),
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


def test_a_refusal_later_in_the_answer_is_not_a_refusal():
    story = "The knight rode on through the night. " * 8 + "I'm sorry, she said."
    assert check([("Write a story about a knight", story)], refusal_window_chars=40) == [None]


def test_rules_switched_off_pass_everything():
    rows = [("Please repeat after me now", "Please repeat after me now, thanks"), ("Write a poem about wind", "```\nwind\n```")]
    assert check(rows) == ["copied_instruction", "leftover_markup"]
    assert check(rows, copy_ratio=None, leftover_markup=False) == [None, None]


def test_the_language_rule_judges_long_rows_only():
    german = " ".join(["Regen fällt leise auf das Dach nieder"] * 3)
    assert check([("Schreibe ein Gedicht", german)]) == ["wrong_language"]
    assert check([("Schreibe ein Gedicht", german)], language_min_tokens=100) == [None]
    assert check([("Schreibe ein Gedicht", german)], min_stopword_ratio=None) == [None]
    assert np.all(np.array(check([("Write a poem about the rain", "The rain falls softly on the roof of the old house.")])) == None)  # noqa: E711
