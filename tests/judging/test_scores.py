"""Scores on hand-made judgments, against values computed by hand in the comments."""

import pytest

from conftest import hand_judgments
from conftest import judgment as J
from conftest import verdict as P
from llamaduo.judging.scores import agreement, by_category, krippendorff_alpha_interval, p_match, pairwise_summary, summarize

LOCAL = hand_judgments()


def test_means_coverage_median_and_failures():
    s = summarize(LOCAL, [50, 70])
    assert s["answers"] == 4 and s["judgments"] == 7 and s["failed_judgments"] == 2
    assert s["scored_fraction"] == round(5 / 7, 4)  # what `gate.min_scored_fraction` bars
    assert s["failure_reasons"] == {"not JSON": 1, "refused": 1}
    assert s["retried_judgments"] == 1 and s["recovered_by_retry"] == 0
    # precision V over 3 answers: 70, 30, 50
    assert s["precision"] == {"scored_answers": 3, "mean": 50.0, "median": 50.0,
                              "coverage_50": round(2 / 3, 4), "coverage_70": round(1 / 3, 4)}
    # similarity: 50, 90, 15
    assert s["similarity"]["mean"] == round(155 / 3, 3) and s["similarity"]["median"] == 50.0
    assert s["similarity"]["coverage_50"] == round(2 / 3, 4) and s["similarity"]["coverage_70"] == round(1 / 3, 4)


def test_all_failed_gives_none_not_zero():
    s = summarize([J("a", 0, None, None, ok=False, error="not JSON")], [50], resamples=100)
    assert s["precision"]["mean"] is None and s["precision"]["coverage_50"] is None
    assert s["precision"]["ci95_low"] is None
    assert s["scored_fraction"] == 0.0 and summarize([], [50])["scored_fraction"] is None


def test_bootstrap_interval_brackets_the_mean():
    s = summarize(LOCAL, [50], resamples=500, seed=1)
    assert s["precision"]["ci95_low"] <= 50.0 <= s["precision"]["ci95_high"]
    assert 30 <= s["precision"]["ci95_low"] and s["precision"]["ci95_high"] <= 70


def test_p_match_divides_by_the_best_service():
    local = summarize(LOCAL, [50, 70])
    svc_a = summarize([J("a", 0, 100, 100, answerer="A"), J("b", 0, 60, 50, answerer="A")], [50, 70])  # 80/75, C50 1, C70 .5
    svc_b = summarize([J("a", 0, 40, 40, answerer="B"), J("b", 0, 60, 60, answerer="B")], [50, 70])    # 50/50
    pm = p_match(local, {"A": svc_a, "B": svc_b}, [50, 70])
    assert pm["precision"]["mean"] == round(50 / 80, 4) and pm["precision"]["mean_best_service"] == "A"
    assert pm["precision"]["coverage_50"] == round((2 / 3) / 1.0, 4)
    assert pm["precision"]["coverage_70"] == round(round(1 / 3, 4) / 0.5, 4)
    assert pm["similarity"]["mean"] == round(round(155 / 3, 3) / 75, 4)
    # a zero service figure gives no ratio, never a division error
    zero = summarize([J("a", 0, 0, 0, answerer="Z")], [50, 70])
    assert p_match(local, {"Z": zero}, [50, 70])["precision"]["mean"] is None


def test_pairwise_rates_count_flips_as_ties_and_leave_failures_out():
    rows = [P("win"), P("win"), P("loss"), P("tie", flipped=True), P("tie"),
            P(None, ok=False, error="local first: not JSON (x); service first: refused (y)")]
    s = pairwise_summary(rows)
    assert (s["comparisons"], s["judged"], s["failed"]) == (6, 5, 1)
    assert (s["wins"], s["ties"], s["losses"], s["flipped"]) == (2, 2, 1, 1)
    assert s["win_rate"] == 0.4 and s["tie_rate"] == 0.4 and s["loss_rate"] == 0.2 and s["flip_rate"] == 0.2
    assert s["failure_reasons"] == {"local first: not JSON": 1, "service first: refused": 1}


def test_krippendorff_alpha_interval_by_hand():
    assert krippendorff_alpha_interval([[0, 0], [10, 10]]) == 1.0
    # D_o = (200 + 200) / 4 = 100; D_e = 8 ordered pairs x 100 / (4 x 3) = 66.67; alpha = 1 - 1.5
    assert krippendorff_alpha_interval([[0, 10], [10, 0]]) == pytest.approx(-0.5)
    assert krippendorff_alpha_interval([[5], [7]]) is None  # nothing pairable
    # three judges on one unit and two on another, against the textbook sums:
    # values 1,2,3 | 4,6 ; D_o = (2*(1+4+1))/2 /5 + (2*4)/1 /5 = 6/5 + 8/5 = 2.8
    # D_e = sum_{i!=k}(v_i-v_k)^2 / (5*4): values 1,2,3,4,6 -> 2*(1+4+9+25+1+4+16+1+9+4) / 20 = 148/20 = 7.4
    assert krippendorff_alpha_interval([[1, 2, 3], [4, 6]]) == pytest.approx(1 - 2.8 / 7.4)


def test_agreement_between_two_judges():
    js = [J(p, 0, s1, 0, judge="j1") for p, s1 in zip("abcd", (10, 20, 30, 40))]
    js += [J(p, 0, s2, 0, judge="j2") for p, s2 in zip("abcd", (15, 25, 35, 90))]
    a = agreement(js, "precision")
    pair = a["pairs"]["j1~j2"]
    assert pair["answers"] == 4 and pair["spearman"] == 1.0 and 0.8 < pair["pearson"] < 1.0
    constant = agreement([J("a", 0, 5, 0), J("a", 0, 5, 0, judge="j2")], "precision")
    assert constant["pairs"]["j1~j2"]["pearson"] is None  # undefined, not zero


def test_by_category_only_with_several():
    cats = {"a": "Summarize", "b": "Closed QA"}
    out = by_category(LOCAL, cats, [50])
    assert out["Summarize"]["precision"]["mean"] == 50.0   # answers of a: 70, 30
    assert out["Closed QA"]["precision"]["mean"] == 50.0
    assert by_category(LOCAL, {"a": "S", "b": "S"}, [50]) is None


def _ref(pid, sample, rouge, chrf, em, answerer="local", task="t"):
    return {"answerer": answerer, "prompt_id": pid, "task": task, "sample": sample, "rouge_l": rouge, "chrf": chrf, "exact_match": em}


def test_reference_summary_means_intervals_and_p_match():
    from llamaduo.judging.scores import reference_by_task, reference_summary

    local = [_ref("a", 0, 20, 40, 0), _ref("a", 1, 40, 50, 100), _ref("b", 0, 60, 60, 0, task="u")]
    s = reference_summary(local, resamples=200, seed=0)
    assert s["answers"] == 3 and s["rouge_l"]["mean"] == 40.0 and s["rouge_l"]["median"] == 40.0
    assert s["exact_match"]["mean"] == pytest.approx(33.333) and s["chrf"]["mean"] == 50.0
    assert 20 <= s["rouge_l"]["ci95_low"] <= 40 <= s["rouge_l"]["ci95_high"] <= 60
    assert "coverage_50" not in s["rouge_l"]  # coverage at zeta stays a judge figure
    svc = {"svc": reference_summary([_ref("a", 0, 80, 100, 100, "svc")]), "weak": reference_summary([_ref("a", 0, 10, 10, 0, "weak")])}
    pm = p_match(s, svc, [], metrics=("rouge_l", "chrf", "exact_match"))
    assert pm["rouge_l"] == {"mean": 0.5, "mean_best_service": "svc"} and pm["chrf"]["mean"] == 0.5
    assert reference_by_task(local)["u"]["rouge_l"]["mean"] == 60.0
    assert reference_summary([])["rouge_l"]["mean"] is None


def test_judge_vs_reference_spearman():
    from llamaduo.judging.scores import judge_vs_reference

    # the judge ranks a0 < a1 < b0 < b1 on precision, the reverse on similarity; ROUGE-L ranks them a0 < a1 < b0 < b1
    js = [J("a", 0, 10, 90), J("a", 1, 20, 80), J("b", 0, 30, 70), J("b", 1, 40, 60), J("b", 1, 50, 50),
          J("c", 0, None, None, ok=False, error="not JSON (x)")]   # no usable judgment: not paired
    ref = [_ref("a", 0, 5, 1, 0), _ref("a", 1, 6, 1, 0), _ref("b", 0, 7, 3, 0), _ref("b", 1, 9, 2, 0), _ref("c", 0, 1, 1, 0)]
    out = judge_vs_reference(js, ref)
    assert out["precision"]["answers"] == 4
    assert out["precision"]["spearman"]["rouge_l"] == 1.0 and out["similarity"]["spearman"]["rouge_l"] == -1.0
    assert out["precision"]["spearman"]["chrf"] == pytest.approx(0.7379, abs=1e-4)   # ties in chrf: 1, 1, 3, 2
    assert out["precision"]["spearman"]["exact_match"] is None                      # constant: undefined, not 0
    # answerers are kept apart: the service's answer to a0 is another point
    svc = judge_vs_reference(js + [J("a", 0, 90, 10, answerer="svc")], ref + [_ref("a", 0, 99, 99, 100, "svc")])
    assert svc["precision"]["answers"] == 5 and svc["precision"]["spearman"]["rouge_l"] == 1.0


def test_failure_kinds_group_by_problem_not_by_value_or_vendor_text():
    from llamaduo.judging.scores import _failure_kind

    assert _failure_kind("not JSON (Expecting value at char 0)") == "not JSON"
    assert _failure_kind("`precision` outside 0-100 (150)") == _failure_kind("`precision` outside 0-100 (-3)")
    assert _failure_kind("request failed: provider `j` (model m): HTTP 400: prompt too long (9000 > 8192); shorten it") == \
        "request failed: HTTP 400"
    assert _failure_kind("service first: request failed: provider `j` (model m): HTTP 413: big") == \
        "service first: request failed: HTTP 413"
    assert _failure_kind("request failed: connection reset") == "request failed"
    assert len(_failure_kind("x" * 500)) == 83
    # a vendor text with "; " in it stays one failure of one order
    rows = [P(None, ok=False, error="local first: request failed: provider `j` (model m): HTTP 400: a; b; c"
                                    "; service first: refused (no)")]
    assert pairwise_summary(rows)["failure_reasons"] == {"local first: request failed: HTTP 400": 1,
                                                         "service first: refused": 1}
