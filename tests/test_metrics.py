"""Metrics on hand-made judgments, against values computed by hand in the comments."""

import pytest

from llamaduo.config import JudgeParams
from llamaduo.metrics import (agreement, by_category, eval_report, krippendorff_alpha_interval, p_match,
                              pairwise_summary, summarize, worst_answers)


def J(pid, sample, prec, sim, ok=True, error=None, judge="j1", answerer="local", reason=None, attempts=1):
    return {"answerer": answerer, "prompt_id": pid, "task": "t", "sample": sample, "judge": judge, "primary": judge == "j1",
            "ok": ok, "precision": prec, "similarity": sim, "error": error, "reason": reason, "attempts": attempts}


LOCAL = [
    J("a", 0, 80, 40), J("a", 0, 60, 60),      # V = 70 / 50
    J("a", 1, 30, 90), J("a", 1, None, None, ok=False, error="not JSON (x)", attempts=2),  # V = 30 / 90
    J("b", 0, 50, 10), J("b", 0, 50, 20),      # V = 50 / 15
    J("b", 1, None, None, ok=False, error="refused (no)"),  # no usable judgment: left out, not zero
]


def test_means_coverage_median_and_failures():
    s = summarize(LOCAL, [50, 70])
    assert s["answers"] == 4 and s["judgments"] == 7 and s["failed_judgments"] == 2
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


def P(outcome, flipped=False, ok=True, error=None):
    return {"judge": "j1", "ok": ok, "outcome": outcome, "flipped": flipped, "error": error}


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


def test_worst_answers_keep_the_reasons():
    js = [J("a", 0, 90, 90, reason="good"), J("b", 0, 10, 5, reason="wrong facts"), J("b", 0, 20, 5, reason="off topic")]
    w = worst_answers(js, n=1, test_by_id={"b": {"instruction": "Summarize B"}},
                      answers=[{"prompt_id": "b", "sample": 0, "answer": "B answer"}])
    assert w == [{"prompt_id": "b", "sample": 0, "precision": 15.0, "similarity": 5.0,
                  "reasons": ["wrong facts", "off topic"], "instruction": "Summarize B", "answer": "B answer"}]


def test_eval_report_keeps_the_top_level_and_adds_the_panel():
    jp = JudgeParams(judges=["j1", "j2"], bootstrap=100, zetas=[50, 70])
    local = LOCAL + [J("a", 0, 60, 50, judge="j2"), J("a", 1, 20, 80, judge="j2"), J("b", 0, 40, 20, judge="j2")]
    base = [J("a", 0, 100, 100, answerer="svc"), J("b", 0, 60, 50, answerer="svc"),
            J("a", 0, 80, 80, answerer="svc", judge="j2"), J("b", 0, 40, 40, answerer="svc", judge="j2")]
    pw = [P("win"), P("tie", flipped=True)]
    test = [{"id": "a", "category": "Summarize"}, {"id": "b", "category": "Summarize"}]
    ev = eval_report(judgments=local, pairwise=pw, baseline_judgments=base, usages={"j1": {"calls": 2}, "total": {"calls": 5}},
                     test=test, judge_params=jp)
    assert ev["judge"] == "j1" and ev["judges"] == ["j1", "j2"] and ev["usage"] == {"calls": 5}
    assert ev["precision"]["mean"] == 50.0 and "coverage_50" in ev["precision"] and "ci95_low" in ev["precision"]
    assert ev["p_match"]["precision"]["mean"] == round(50 / 80, 4)
    assert ev["pairwise"]["win_rate"] == 0.5 and ev["pairwise"]["flipped"] == 1
    assert ev["per_judge"]["j2"]["precision"]["mean"] == 40.0                  # 60, 20, 40
    assert ev["per_judge"]["j2"]["p_match"]["precision"]["mean"] == round(40 / 60, 4)
    # panel: per answer the mean over judges: a0 (70+60)/2, a1 (30+20)/2, b0 (50+40)/2 -> mean 45
    assert ev["panel"]["precision"]["mean"] == 45.0
    assert ev["panel"]["p_match"]["precision"]["mean"] == round(45 / 70, 4)   # service panel: (90+70)/2 = 80, 50 -> 70
    assert ev["panel"]["agreement"]["precision"]["pairs"]["j1~j2"]["answers"] == 3
    assert "by_category" not in ev  # one category only
