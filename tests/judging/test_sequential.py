"""Sequential judging: a seeded order in rounds, a stop once the gate cannot pass (and none while it can), what
was paid against a full pass, and nothing of it when the gate reads a reference metric."""

import math
from statistics import fmean, stdev

from scipy.stats import t as student

from conftest import judgment as J
from llamaduo.config import GateParams
from llamaduo.judging.sequential import futile, judge_in_rounds, order, rounds_of

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


def test_a_model_far_below_the_threshold_stops_after_the_first_round_that_proves_it():
    gate = GateParams(metric="precision", mode="threshold", threshold=70, cycle_alpha=0.05 / 3)
    judge, asked = fake_judge(spread)
    judgments, _, usages, seq = judge_in_rounds(ANSWERS, judge=judge, gate=gate, rounds=4, seed=0, baseline_judgments=[])
    # round 1: 4 prompts; the upper bound at alpha 0.05/3/4 is mean + t(3) * sd / 2, below 70 by hand
    first = [spread(p) for p in order(PROMPTS, 0)[:4]]
    upper = fmean(first) + student.ppf(1 - 0.05 / 12, 3) * stdev(first) / math.sqrt(4)
    assert upper < 70 and len(asked) == 1 and asked[0] == sorted(order(PROMPTS, 0)[:4])
    assert seq == {"active": True, "rounds": 4, "rounds_run": 1, "seed": 0, "prompts": 16, "prompts_judged": 4,
                   "judgments_paid": 16, "judgments_full": 64, "saving": 0.75,
                   "stopped": "round 1 of 4: the gate cannot pass (upper bound below the bar at alpha 0.004167)"}
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
    assert futile({p: spread(p) for p in PROMPTS[:4]}, {"svc": {p: spread(p) + 20 for p in PROMPTS}}, gate, 0.01)
    # paired, the difference is exactly -20 on every prompt: no spread, the bound is -20
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


def test_futility_needs_two_prompts_and_a_bar():
    gate = GateParams(metric="precision", mode="point", threshold=None)
    assert not futile({"a": 1.0, "b": 2.0}, {}, gate, 0.05)
    assert not futile({"a": 1.0}, {}, GateParams(metric="precision", mode="threshold", threshold=70), 0.05)
    assert futile({"a": 1.0, "b": 2.0}, {}, GateParams(metric="precision", mode="threshold", threshold=70), 0.05)
