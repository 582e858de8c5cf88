"""Sequential judging: a seeded order in rounds, a stop once the gate will not pass (and none while it may), the
predicted chance of a pass it stops on, what was paid against a full pass, and nothing of it when the gate reads a
reference metric."""

import math
from statistics import fmean, stdev

import pytest
from scipy.stats import t as student

from conftest import judgment as J
from llamaduo.config import GateParams
from llamaduo.intervals import pass_chance
from llamaduo.judging.sequential import chance_to_pass, judge_in_rounds, order, rounds_of

PROMPTS = [f"p{i:02d}" for i in range(16)]
ANSWERS = [{"prompt_id": p, "sample": s, "task": "t"} for p in PROMPTS for s in range(2)]


def fake_judge(score_of):
    """A judge giving each answer two judgments of `score_of(prompt)`; counts what it was asked."""
    asked = []

    def judge(answers):
        asked.append(sorted({a["prompt_id"] for a in answers}))
        rows = [J(a["prompt_id"], a["sample"], score_of(a["prompt_id"]), 0) for a in answers for _ in range(2)]
        return rows, [], {"j1": {"calls": len(answers), "cost_usd": 0.0}, "total": {"calls": len(answers)}}

    return judge, asked


def spread(p):  # 16 prompt scores around 30: 30 + (-7 ... +8)
    return 30.0 + (int(p[1:]) % 16) - 7.0


def test_the_order_is_seeded_and_the_rounds_cover_every_prompt_once():
    a, b = order(list(reversed(PROMPTS)), 0), order(PROMPTS, 0)
    assert a == b and a != PROMPTS and order(PROMPTS, 1) != a and sorted(a) == PROMPTS
    parts = rounds_of(a, 3)
    assert [len(p) for p in parts] == [6, 5, 5] and sum(parts, []) == a
    assert rounds_of(PROMPTS[:2], 4) == [["p00"], ["p01"]]


def predictive(first, total, bar, alpha):
    """The predicted chance of a pass, by hand: the rest's mean is m + s sqrt(1/n1 + 1/n2) T, T ~ t(n1 - 1), and the
    whole set passes when its mean clears bar + t(1 - alpha, N - 1) s / sqrt(N)."""
    n1, n2, m, s = len(first), total - len(first), fmean(first), stdev(first)
    need = (total * (bar + student.ppf(1 - alpha, total - 1) * s / math.sqrt(total)) - n1 * m) / n2
    return student.sf((need - m) / (s * math.sqrt(1 / n1 + 1 / n2)), n1 - 1)


def test_the_predicted_chance_of_a_pass_matches_the_formula_and_its_limits():
    first = [22.0, 35.0, 41.0, 30.0, 27.0]
    for bar in (25.0, 35.0, 45.0):
        assert float(pass_chance(first, 16, bar, 0.05)) == pytest.approx(predictive(first, 16, bar, 0.05), rel=1e-9)
    # the higher the bar, the lower the chance; rows are independent
    row = pass_chance([first, [v + 10 for v in first]], 16, 35.0, 0.05)
    assert row[0] < 0.5 < row[1] and float(pass_chance(first, 16, 45.0, 0.05)) < 0.01
    # nothing left to judge: the t bound decides; no spread so far: the mean against the bar
    assert float(pass_chance(first, 5, 20.0, 0.05)) == 1.0 and float(pass_chance(first, 5, 25.0, 0.05)) == 0.0
    assert float(pass_chance([40.0, 40.0], 16, 70.0, 0.05)) == 0.0 and float(pass_chance([80.0, 80.0], 16, 70.0, 0.05)) == 1.0


def test_a_model_far_below_the_threshold_stops_after_the_first_round_that_settles_it():
    gate = GateParams(metric="precision", mode="threshold", threshold=45, cycle_alpha=0.05 / 3)
    judge, asked = fake_judge(spread)
    judgments, _, usages, seq = judge_in_rounds(ANSWERS, judge=judge, gate=gate, rounds=4, seed=0, baseline_judgments=[])
    # round 1: 4 prompts; the chance that the other 12 let the whole 16 clear 45 at alpha 0.05/3, by hand
    first = [spread(p) for p in order(PROMPTS, 0)[:4]]
    chance = predictive(first, 16, 45, 0.05 / 3)
    assert chance < 0.05 / 3 and len(asked) == 1 and asked[0] == sorted(order(PROMPTS, 0)[:4])
    assert seq == {"active": True, "rounds": 4, "rounds_run": 1, "seed": 0, "prompts": 16, "prompts_judged": 4,
                   "judgments_paid": 16, "judgments_full": 64, "saving": 0.75,
                   "stopped": f"round 1 of 4: the gate will not pass (the chance that the rest of the prompts let it pass "
                              f"is {chance:.2g}, below alpha 0.01667)"}
    assert len(judgments) == 16 and len(usages) == 1


def test_a_model_that_may_still_pass_is_judged_in_full():
    gate = GateParams(metric="precision", mode="threshold", threshold=28, cycle_alpha=0.05 / 3)
    judge, asked = fake_judge(spread)
    judgments, _, usages, seq = judge_in_rounds(ANSWERS, judge=judge, gate=gate, rounds=4, seed=0, baseline_judgments=[])
    assert len(asked) == 4 and sorted(sum(asked, [])) == PROMPTS and len(judgments) == 64
    assert (seq["rounds_run"], seq["judgments_paid"], seq["judgments_full"], seq["saving"], seq["stopped"]) == (4, 64, 64, 0.0, None)


def test_non_inferiority_stops_on_the_paired_difference_and_a_reference_gate_judges_everything():
    service = [J(p, 0, spread(p) + 20, 0, answerer="svc") for p in PROMPTS]  # the service 20 points ahead on each prompt
    gate = GateParams(metric="precision", mode="non_inferiority", margin=5, cycle_alpha=0.05 / 3)
    assert chance_to_pass({p: spread(p) for p in PROMPTS[:4]}, {"svc": {p: spread(p) + 20 for p in PROMPTS}}, gate, 0.01,
                          set(PROMPTS)) == 0.0
    # paired, the difference is exactly -20 on every prompt: no spread, below -margin
    judge, asked = fake_judge(spread)
    *_, seq = judge_in_rounds(ANSWERS, judge=judge, gate=gate, rounds=4, seed=0, baseline_judgments=service)
    assert seq["rounds_run"] == 1 and seq["saving"] == 0.75
    # within the margin: never futile
    close = [J(p, 0, spread(p) + 1, 0, answerer="svc") for p in PROMPTS]
    judge, asked = fake_judge(spread)
    *_, seq = judge_in_rounds(ANSWERS, judge=judge, gate=gate, rounds=4, seed=0, baseline_judgments=close)
    assert seq["rounds_run"] == 4 and seq["stopped"] is None
    # the gate on ROUGE-L: the judge decides nothing, one round of every prompt
    judge, asked = fake_judge(spread)
    *_, seq = judge_in_rounds(ANSWERS, judge=judge, gate=GateParams(metric="rouge_l"), rounds=4, seed=0, baseline_judgments=[])
    assert len(asked) == 1 and seq["active"] is False and seq["judgments_paid"] == seq["judgments_full"] == 64


def test_the_chance_needs_two_prompts_a_bar_and_every_service_paired():
    gate = GateParams(metric="precision", mode="threshold", threshold=70)
    assert chance_to_pass({"a": 1.0, "b": 2.0}, {}, GateParams(metric="precision", mode="point", threshold=None), 0.05, {"a", "b", "c"}) is None
    assert chance_to_pass({"a": 1.0}, {}, gate, 0.05, {"a", "b", "c"}) is None
    assert chance_to_pass({"a": 1.0, "b": 2.0}, {}, gate, 0.05, {"a", "b", "c"}) == pytest.approx(
        predictive([1.0, 2.0], 3, 70, 0.05), rel=1e-9)
    ni = GateParams(metric="precision", mode="non_inferiority", margin=5)
    assert chance_to_pass({"a": 1.0, "b": 2.0}, {}, ni, 0.05, {"a", "b", "c"}) is None
    # one service has a single paired prompt: nothing can be told against it, so no stop
    assert chance_to_pass({"a": 1.0, "b": 2.0}, {"s1": {"a": 50.0, "b": 60.0}, "s2": {"a": 1.0}}, ni, 0.05, {"a", "b", "c"}) is None
    # against two services: the higher chance (the gate may still pass against the weaker one)
    local = {p: spread(p) for p in PROMPTS[:6]}
    weak, strong = {p: spread(p) - 10 + (int(p[1:]) % 3) for p in PROMPTS}, {p: spread(p) + 30 + (int(p[1:]) % 3) for p in PROMPTS}
    both = chance_to_pass(local, {"weak": weak, "strong": strong}, ni, 0.05, set(PROMPTS))
    alone = [chance_to_pass(local, {k: v}, ni, 0.05, set(PROMPTS)) for k, v in (("weak", weak), ("strong", strong))]
    assert both == max(alone) and alone[0] > 0.9 and alone[1] < 1e-6
