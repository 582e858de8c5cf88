"""eval.json, baseline.json and the worst answers, from hand-made judgments (values by hand in the comments)."""

from conftest import hand_judgments
from conftest import judgment as J
from conftest import verdict as P
from llamaduo.config import JudgeParams
from llamaduo.judging.report import baseline_report, eval_report, worst_answers

LOCAL = hand_judgments()


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


def test_baseline_report_scores_each_service_by_each_judge():
    jp = JudgeParams(judges=["j1", "j2"], bootstrap=100, zetas=[50], baseline={"services": ["svc"]})
    judgments = [J("a", 0, 100, 100, answerer="svc"), J("b", 0, 60, 50, answerer="svc"),
                 J("a", 0, 80, 80, answerer="svc", judge="j2"), J("b", 0, None, None, ok=False, error="not JSON (x)",
                                                                  answerer="svc", judge="j2")]
    answers = [{"service": "svc", "finish_reason": "stop"}, {"service": "svc", "finish_reason": "length"}]
    rep = baseline_report(judgments=judgments, answers=answers, answer_usage={"svc": {"calls": 2}},
                          judge_usage={"j1": {"calls": 2}}, judge_params=jp)
    svc = rep["services"]["svc"]
    assert svc["answers"] == 2 and svc["length_cutoffs"] == 1 and svc["refusals"] == 0
    assert svc["by_judge"]["j1"]["precision"]["mean"] == 80.0 and svc["by_judge"]["j1"]["precision"]["coverage_50"] == 1.0
    assert svc["by_judge"]["j2"]["precision"]["mean"] == 80.0 and svc["by_judge"]["j2"]["failed_judgments"] == 1
    assert svc["panel"]["precision"]["mean"] == 75.0  # a: (100 + 80) / 2 = 90; b: j1's 60 alone (j2 failed); mean 75
    assert rep["usage"] == {"answers": {"svc": {"calls": 2}}, "judging": {"j1": {"calls": 2}}}


def test_eval_report_puts_the_reference_metrics_beside_the_judge():
    def ref(pid, sample, rouge, answerer="local", task="t"):
        return {"answerer": answerer, "prompt_id": pid, "task": task, "sample": sample, "rouge_l": rouge, "chrf": rouge / 2,
                "exact_match": 100.0 if rouge == 100 else 0.0}

    jp = JudgeParams(provider="j1", bootstrap=100, zetas=[50])
    base = [J("a", 0, 100, 100, answerer="svc"), J("b", 0, 60, 50, answerer="svc")]
    # local V^j by the primary judge (hand_judgments): a0 70, a1 30, b0 50 (b1 has no usable judgment)
    reference = [ref("a", 0, 40), ref("a", 1, 10), ref("b", 0, 30, task="u"), ref("b", 1, 20, task="u"),
                 ref("a", 0, 100, "svc"), ref("b", 0, 60, "svc")]
    ev = eval_report(judgments=LOCAL, pairwise=[], baseline_judgments=base, usages={}, test=[], judge_params=jp,
                     reference=reference)
    r = ev["reference"]
    assert r["metrics"] == ["rouge_l", "chrf", "exact_match"]
    assert r["answers"] == 4 and r["rouge_l"]["mean"] == 25.0 and r["chrf"]["mean"] == 12.5   # every local answer, judged or not
    assert r["scored_fraction"] == 1.0 and ev["scored_fraction"] == round(5 / 7, 4)
    # an answer the judge saw but the reference table lacks is one not scored
    assert eval_report(judgments=LOCAL, pairwise=[], baseline_judgments=base, usages={}, test=[], judge_params=jp,
                       reference=reference[1:])["reference"]["scored_fraction"] == 0.75
    assert r["rouge_l"]["ci95_low"] <= 25.0 <= r["rouge_l"]["ci95_high"]
    assert r["services"]["svc"]["rouge_l"]["mean"] == 80.0 and r["services"]["svc"]["exact_match"]["mean"] == 50.0
    assert r["p_match"]["rouge_l"]["mean"] == round(25 / 80, 4) and r["p_match"]["exact_match"]["mean"] == 0.0
    # the primary judge ranks a0 > b0 > a1 on precision, as ROUGE-L does; over all answers the services' too
    assert r["judge_agreement"]["local"]["precision"] == {"answers": 3, "spearman": {"rouge_l": 1.0, "chrf": 1.0, "exact_match": None}}
    assert r["judge_agreement"]["all"]["precision"]["answers"] == 5
    assert r["by_task"]["u"]["rouge_l"]["mean"] == 25.0 and r["by_task"]["t"]["rouge_l"]["mean"] == 25.0
    assert ev["precision"]["mean"] == 50.0                                          # the judge's figures unchanged
    assert "reference" not in eval_report(judgments=LOCAL, pairwise=[], baseline_judgments=[], usages={}, test=[], judge_params=jp)
