"""Reference metrics: equal to the reference implementations (rouge-score, sacrebleu) on hand-made pairs, the SQuAD
normalisation by hand, and the `reference` table's rows."""

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from llamaduo import tables
from llamaduo.config import GateParams
from llamaduo.errors import DataError
from llamaduo.judging.reference import REFERENCE_METRICS, Scorer, normalize_answer, reference_scores
from llamaduo.reporting import gate

PAIRS = [  # (answer, reference)
    ("the cat sat on the mat", "a cat sat on a mat"),
    ("Positive. The crew was attentive and the food was delicious.", "Positive"),
    ("J. K. Rowling wrote it; Bloomsbury published it first.", "Harry Potter was written by J. K. Rowling and first "
                                                                 "published by Bloomsbury."),
    ("Negative", "Negative"),
    ("", "an empty answer scores zero"),
    ("完全に違う", "something else entirely"),
]


@pytest.mark.parametrize("answer,reference", PAIRS)
def test_equal_to_rouge_score_and_sacrebleu(answer, reference):
    got = Scorer()(answer, reference)
    want_rouge = rouge_scorer.RougeScorer(["rougeL"]).score(reference, answer)["rougeL"].fmeasure
    assert got["rouge_l"] == pytest.approx(100 * want_rouge, abs=1e-9)
    assert got["chrf"] == pytest.approx(sacrebleu.sentence_chrf(answer, [reference]).score, abs=1e-9)


def test_values_by_hand():
    s = Scorer()
    # LCS of (the|a) cat sat on (the|a) mat is "cat sat on mat": 4 of 6 tokens each side -> F1 = 2/3
    assert s("the cat sat on the mat", "a cat sat on a mat")["rouge_l"] == pytest.approx(200 / 3)
    neg = s("Negative", "negative")  # rouge-score and SQuAD lowercase; chrF does not (its default is case-sensitive)
    assert neg["rouge_l"] == 100.0 and neg["exact_match"] == 100.0 and neg["chrf"] < 100.0
    assert s("same text", "same text")["chrf"] == 100.0
    assert s("xyz", "abc") == {"rouge_l": 0.0, "chrf": 0.0, "exact_match": 0.0}
    # rouge-score's tokenizer keeps [a-z0-9] only: text without such characters has no tokens and scores 0
    assert s("完全に違う", "完全に違う")["rouge_l"] == 0.0 and s("完全に違う", "完全に違う")["exact_match"] == 100.0


@pytest.mark.parametrize("answer,reference,match", [
    ("The Eiffel Tower.", "eiffel tower", True),
    ("An apple!", "apple", True),
    ("Washington, D.C.", "washington dc", True),
    ("  Positive \n", "positive", True),
    ("theory", "ory", False),        # articles go only as whole words
    ("Positive", "Negative", False),
    ("a", "", True),                 # an article alone normalises to nothing
])
def test_exact_match_after_squad_normalisation(answer, reference, match):
    assert (normalize_answer(answer) == normalize_answer(reference)) is match
    assert Scorer()(answer, reference)["exact_match"] == (100.0 if match else 0.0)


def test_rows_per_answerer_and_table_round_trip(tmp_path):
    test = [{"id": "a", "response": "Positive"}, {"id": "b", "response": "Negative"}]
    local = [{"prompt_id": "a", "task": "classify", "sample": 0, "answer": "positive"},
             {"prompt_id": "b", "task": "classify", "sample": 1, "answer": "Positive"}]
    service = [{"service": "svc", "prompt_id": "b", "task": "classify", "sample": 0, "answer": "negative."}]
    rows = reference_scores(local, test) + reference_scores(service, test)
    assert [(r["answerer"], r["prompt_id"], r["sample"], r["exact_match"]) for r in rows] == \
        [("local", "a", 0, 100.0), ("local", "b", 1, 0.0), ("svc", "b", 0, 100.0)]
    tables.write(tmp_path / "reference.parquet", "reference", rows)
    assert tables.read(tmp_path / "reference.parquet", "reference") == rows


def test_an_answer_without_its_test_row_is_an_error():
    with pytest.raises(DataError, match="prompt 'zz'"):
        reference_scores([{"prompt_id": "zz", "task": "t", "sample": 0, "answer": "x"}], [{"id": "a", "response": "y"}])


def test_the_gate_knows_exactly_the_reference_metrics():
    assert gate.REFERENCE_METRICS == REFERENCE_METRICS
    allowed = set(GateParams.model_fields["metric"].annotation.__args__)
    assert allowed == set(gate.JUDGE_METRICS) | set(REFERENCE_METRICS)
