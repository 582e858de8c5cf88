"""Decontamination: each of the three tests (exact, shared n-gram, MinHash) names the test row a leak came from."""

import numpy as np

from llamaduo.config import CurateParams
from llamaduo.curation.decontam import Decontaminate
from llamaduo.curation.tokens import tokenize

TEST = [
    {"id": "e1", "instruction": "Summarize the report on river pollution in the northern valley.",
     "response": "Factories upstream dumped waste; fish died; the council fined them and ordered a cleanup within a year."},
    {"id": "e2", "instruction": "Classify the tone of this review: the soup was cold and the waiter rude.",
     "response": "Negative."},
]
NGRAM = "In short: they dumped waste, fish died, the council fined them and ordered a cleanup within a year."
PARAPHRASE = "factories upstream dumped waste and fish died so the council fined them and ordered a cleanup"


def leaks(rows, alive=None, **params):
    p = CurateParams(**params)
    fields = tokenize([r[0] for r in rows], [r[1] for r in rows])
    shingles = fields.windows(p.shingle_size, short=True)
    alive = np.ones(len(rows), dtype=bool) if alive is None else np.asarray(alive)
    return Decontaminate(p, TEST).leaks(fields, shingles, alive)


def test_each_method_finds_its_leak_and_names_the_test_row():
    rows = [("SUMMARIZE the report on river pollution in the northern valley!", "Something else entirely, told briefly."),
            ("Write a note about rivers and councils.", NGRAM),
            ("Tell me about pollution.", PARAPHRASE),
            ("Write a haiku about spring rain on the mountains.", "Soft rain on the peaks; green returns to the valley.")]
    assert leaks(rows, decontam_minhash_threshold=0.3) == {0: ("exact", "e1"), 1: ("ngram", "e1"), 2: ("minhash", "e1")}


def test_methods_switched_off_and_rows_not_alive_are_not_flagged():
    rows = [("Write a note about rivers and councils.", NGRAM), ("Tell me about pollution.", PARAPHRASE)]
    assert leaks(rows, decontam_minhash_threshold=None) == {0: ("ngram", "e1")}
    assert leaks(rows, decontam_ngram=40, decontam_minhash_threshold=None) == {}
    assert leaks(rows, alive=[False, True], decontam_minhash_threshold=0.3) == {1: ("minhash", "e1")}


def test_a_short_test_answer_is_matched_exactly_not_by_ngram():
    rows = [("Classify the tone: great food.", "negative"), ("Classify the tone: bad food.", "Negative, mostly.")]
    assert leaks(rows) == {0: ("exact", "e2")}
