"""The gate's modes on hand-made paired scores: each bound recomputed here from Student's t (mean - t * sd / sqrt(n))
and Hall's skewness-corrected t (its cubic solved numerically), the error each cycle spends, and the power the test
set gives."""

import math
from statistics import fmean, stdev

import pytest
from scipy.optimize import brentq
from scipy.stats import norm
from scipy.stats import t as student

from conftest import judgment as J
from llamaduo.config import GateParams
from llamaduo.intervals import cycle_alpha, detectable, power_at, prompts_needed
from llamaduo.reporting.gate import assess, decide, power_warning
from llamaduo.reporting.summary import prompt_scores

PROMPTS = [f"p{i}" for i in range(10)]
# the service's per-prompt ROUGE-L and the local model's difference from it on each prompt
SERVICE = dict(zip(PROMPTS, [20.0, 25.0, 18.0, 30.0, 22.0, 15.0, 27.0, 19.0, 24.0, 21.0]))
DIFF = [1.0, -2.0, 0.5, 2.0, -1.0, 1.5, -0.5, 0.0, 1.0, -1.5]  # mean 0.1, sd 1.3292


def t_bound(values, alpha):
    return fmean(values) - student.ppf(1 - alpha, len(values) - 1) * stdev(values) / math.sqrt(len(values))


def hall_bound(values, alpha):
    """mean - T * sd / sqrt(n), T solving T + a T^2 + a^2 T^3 / 3 + b = t quantile, a = 3b = g / (3 sqrt(n)), g the
    sample skewness (adjusted Fisher-Pearson)."""
    n, m, s = len(values), fmean(values), stdev(values)
    g = n / ((n - 1) * (n - 2)) * sum(((v - m) / s) ** 3 for v in values)
    a, b = g / (3 * math.sqrt(n)), g / (6 * math.sqrt(n))
    crit = student.ppf(1 - alpha, n - 1)
    big = brentq(lambda x: x + a * x * x + a * a * x ** 3 / 3 + b - crit, -1e3, 1e3, xtol=1e-12)
    return m - big * s / math.sqrt(n)


def by_hand(values, alpha):
    return min(t_bound(values, alpha), hall_bound(values, alpha))


def local(shift=0.0):
    return {p: SERVICE[p] + d + shift for p, d in zip(PROMPTS, DIFF)}


def gate(p, loc, services, alpha=0.05, champion=None):
    test = assess(loc, services, p, alpha)
    return test, decide({"score": fmean(loc.values()), "scored_fraction": 1.0, "test": test}, champion, p)


def test_non_inferiority_decides_on_the_paired_lower_bound():
    p = GateParams(metric="rouge_l", mode="non_inferiority", margin=1.0)
    test, (ok, why) = gate(p, local(), {"svc": SERVICE})
    # t: 0.1 - 1.833 * 1.3292 / sqrt(10) = -0.670; the differences lean left (skewness -0.31), Hall's bound -0.712
    bound = by_hand(DIFF, 0.05)
    assert test["bound"] == pytest.approx(bound, abs=1e-3) and bound == pytest.approx(-0.7118, abs=1e-3)
    assert test["estimate"] == pytest.approx(0.1) and test["prompts"] == 10 and test["best_service"] == "svc"
    assert ok and why == ("rouge_l local - svc +0.10, 95% lower bound -0.71 > -margin -1: no worse than the service "
                          "(10 prompts)")
    # the same differences 0.5 lower: the bound -1.21 is below -1, though the mean -0.4 is within the margin
    test, (ok, why) = gate(p, local(-0.5), {"svc": SERVICE})
    assert not ok and test["estimate"] == pytest.approx(-0.4)
    assert why == "rouge_l local - svc -0.40: its 95% lower bound -1.21 is not above -margin -1 (10 prompts)"
    # the pairing is what makes this evidence: unpaired, the two means' intervals overlap by far more than the margin
    assert stdev(SERVICE.values()) > 3 * stdev(DIFF)


def test_a_smaller_share_of_alpha_widens_the_bound_and_can_turn_a_pass():
    p = GateParams(metric="rouge_l", mode="non_inferiority", margin=1.0)
    test, (ok, _) = gate(p, local(), {"svc": SERVICE}, alpha=0.005)
    assert test["bound"] == pytest.approx(by_hand(DIFF, 0.005), abs=1e-3) and test["bound"] < -1 and not ok
    assert decide({"score": 1, "scored_fraction": 1.0, "test": test}, None, p)[1].startswith(
        "rouge_l local - svc +0.10: its 99.5% lower bound")


def test_non_inferiority_pairs_with_the_best_service_and_needs_one():
    p = GateParams(metric="rouge_l", mode="non_inferiority", margin=1.0)
    worse = {k: v - 5 for k, v in SERVICE.items()}
    test, (ok, _) = gate(p, local(), {"weak": worse, "strong": SERVICE})
    assert test["best_service"] == "strong" and test["estimate"] == pytest.approx(0.1) and ok
    test, (ok, why) = gate(p, local(), {})
    assert not ok and why.startswith("no service answers to compare with on `rouge_l`")


def test_threshold_mode_needs_the_lower_bound_above_the_bar_where_the_point_rule_takes_the_mean():
    values = [72.0, 80.0, 75.0, 78.0, 70.0, 76.0, 74.0, 79.0]  # mean 75.5, sd 3.464
    loc = dict(zip(PROMPTS, values))
    # Student's t: 75.5 - 1.895 * 3.464 / sqrt(8) = 73.18; the scores lean left (skewness -0.59): Hall's 72.99
    bound = by_hand(values, 0.05)
    assert bound == pytest.approx(72.9875, abs=1e-3) and t_bound(values, 0.05) == pytest.approx(73.1796, abs=1e-3)
    test, (ok, why) = gate(GateParams(metric="precision", mode="threshold", threshold=72.5), loc, {})
    assert test["bound"] == pytest.approx(bound, abs=1e-3) and ok
    assert why == "precision 75.50, 95% lower bound 72.99 > threshold 72.5 (8 prompts)"
    # a bar Student's t alone would clear: the long lower tail holds it back
    test, (ok, why) = gate(GateParams(metric="precision", mode="threshold", threshold=73), loc, {})
    assert not ok and why == "precision 75.50: its 95% lower bound 72.99 is not above the threshold 73 (8 prompts)"
    # mirrored, the scores lean right: Hall's bound is above Student's t, and the gate keeps the t bound
    mirrored = {k: 150.0 - v for k, v in loc.items()}
    assert hall_bound(list(mirrored.values()), 0.05) > t_bound(list(mirrored.values()), 0.05)
    assert assess(mirrored, {}, GateParams(metric="precision", mode="threshold", threshold=70), 0.05)["bound"] == \
        pytest.approx(150.0 - 75.5 - (75.5 - 73.1796), abs=1e-3)
    # the paper's rule passes the same scores at 74, and at 75.5 itself
    assert gate(GateParams(metric="precision", mode="point", threshold=74), loc, {})[1][0]
    assert gate(GateParams(metric="precision", mode="point", threshold=75.5), loc, {})[1][0]
    assert not gate(GateParams(metric="precision", mode="point", threshold=75.6), loc, {})[1][0]
    # one prompt has no interval at all
    assert gate(GateParams(metric="precision", mode="threshold", threshold=10), {"p0": 99.0}, {})[1] == \
        (False, "fewer than 2 test prompts scored for `precision`: no interval")


def test_no_regression_still_holds_in_the_interval_modes():
    p = GateParams(metric="rouge_l", mode="non_inferiority", margin=1.0)
    loc = local()
    champ = {"version": "3", "metric": "rouge_l", "ci_low": fmean(loc.values()) + 0.01}
    ok, why = gate(p, loc, {"svc": SERVICE}, champion=champ)[1]
    assert not ok and "below champion v3's 95% interval" in why
    ok, why = gate(p, loc, {"svc": SERVICE}, champion=champ | {"ci_low": 1.0})[1]
    assert ok and why.endswith("(10 prompts, no regression)")


def test_per_prompt_scores_average_the_samples_of_a_prompt():
    ref = [{"answerer": "local", "prompt_id": "a", "sample": 0, "rouge_l": 10.0},
           {"answerer": "local", "prompt_id": "a", "sample": 1, "rouge_l": 30.0},
           {"answerer": "local", "prompt_id": "b", "sample": 0, "rouge_l": 50.0},
           {"answerer": "svc", "prompt_id": "a", "sample": 0, "rouge_l": 25.0}]
    assert prompt_scores("rouge_l", judgments=[], baseline_judgments=[], reference=ref) == \
        ({"a": 20.0, "b": 50.0}, {"svc": {"a": 25.0}})
    judged = [J("a", 0, 80, 40), J("a", 0, 60, 40), J("a", 1, 40, 0), J("a", 0, 0, 0, judge="j2")]
    svc = [J("a", 0, 90, 40, answerer="svc"), J("a", 0, 10, 40, answerer="svc", judge="j2")]
    # answer (a,0) = 70 and (a,1) = 40 -> prompt a = 55; the service's primary judge only
    assert prompt_scores("precision", judgments=judged, baseline_judgments=svc, reference=[]) == ({"a": 55.0}, {"svc": {"a": 90.0}})


def test_alpha_is_spent_in_even_shares_that_add_up_to_at_most_the_loops():
    spent, shares = 0.0, []
    for cycle in range(4):
        shares.append(cycle_alpha(0.05, spent, cycle, 4))
        spent += shares[-1]
    assert shares == pytest.approx([0.0125] * 4) and spent == pytest.approx(0.05)
    # a loop whose max_cycles grew from 2 to 4 after cycle 0 spent 0.025: the rest over the three cycles left
    assert cycle_alpha(0.05, 0.025, 1, 4) == pytest.approx(0.025 / 3)
    # a cycle past max_cycles (a manual `dvc repro`) gets what is left, and nothing once all is spent
    assert cycle_alpha(0.05, 0.04, 7, 4) == pytest.approx(0.01) and cycle_alpha(0.05, 0.05, 4, 4) == 0
    with pytest.raises(ValueError, match="more than the loop's whole `alpha` 0.05"):
        GateParams(alpha=0.05, cycle_alpha=0.06)
    # outside a loop (no share set) one test spends all of alpha
    test = assess(local(), {"svc": SERVICE}, GateParams(metric="rouge_l"), GateParams(metric="rouge_l").alpha)
    assert test["alpha"] == 0.05


def test_detectable_difference_and_prompts_needed_invert_the_t_tests_power():
    sd, alpha = 7.0, 0.05 / 3
    d16 = detectable(sd, 16, alpha)
    assert power_at(d16, sd, 16, alpha) == pytest.approx(0.8, abs=1e-4)
    # about (z_{1-a} + z_{0.8}) sd / sqrt(n), a little wider with 15 degrees of freedom
    normal = (norm.ppf(1 - alpha) + norm.ppf(0.8)) * sd / 4
    assert normal < d16 < normal * 1.15 and d16 == pytest.approx(5.63, abs=0.01)
    n = prompts_needed(sd, 2.0, alpha)
    assert power_at(2.0, sd, n, alpha) >= 0.8 > power_at(2.0, sd, n - 1, alpha) and 100 < n < 140
    assert prompts_needed(sd, 0.0, alpha) is None and detectable(0.0, 5, alpha) == 0.0 and detectable(sd, 1, alpha) is None


def test_the_report_warns_when_the_test_set_cannot_see_the_margin():
    rng_diffs = [3.0, -8.0, 6.0, -4.0, 9.0, -7.0, 2.0, -5.0]  # sd 6.5 on 8 prompts
    p = GateParams(metric="rouge_l", mode="non_inferiority", margin=2.0)
    loc = {k: SERVICE[k] + d for k, d in zip(PROMPTS, rng_diffs)}
    test = assess(loc, {"svc": SERVICE}, p, 0.05)
    assert test["underpowered"] and test["detectable"] > 2.0 and test["target"] == 2.0
    need = test["prompts_needed"]
    assert power_at(2.0, test["sd"], need, 0.05) >= 0.8 > power_at(2.0, test["sd"], need - 1, 0.05)
    assert power_warning(test) == (f"8 test prompts detect a difference of {test['detectable']:.1f} points at 80% power "
                                   f"(alpha 0.05), more than the 2.0 the gate asks about: about {need} test prompts "
                                   f"would detect it (at the measured spread {test['sd']:.1f})")
    # a wide margin is within reach: no warning
    wide = assess(loc, {"svc": SERVICE}, GateParams(metric="rouge_l", mode="non_inferiority", margin=20.0), 0.05)
    assert not wide["underpowered"] and power_warning(wide) is None


def test_no_regression_pairs_with_the_champions_per_prompt_scores():
    """champion.json's per-prompt scores pair the candidate with the champion prompt by prompt: a steady loss the
    champion's wide interval hides is a regression, and a small one within the margin is not, though the mean falls
    below a narrow interval; with too few shared prompts the unpaired rule decides, and says so."""
    from llamaduo.reporting.gate import MIN_PAIRED, regression

    p = GateParams(metric="rouge_l", mode="non_inferiority", margin=1.0)
    weak_service = {k: v - 5 for k, v in SERVICE.items()}  # the service check passes throughout
    noise = [0.3 * d for d in DIFF]

    def run(shift, champ):
        loc = {k: SERVICE[k] + shift + e for k, e in zip(PROMPTS, noise)}
        test = assess(loc, {"svc": weak_service}, p, 0.05)
        reg = regression(loc, champ, p, 0.05)
        return reg, decide({"score": fmean(loc.values()), "scored_fraction": 1.0, "test": test, "regression": reg},
                           champ, p)

    # 2.5 points lower on every prompt: mean 19.63 is inside the champion's interval (from 19.2), paired it is a loss
    champ = {"version": "4", "metric": "rouge_l", "ci_low": 19.2, "scores": dict(SERVICE)}
    reg, (ok, why) = run(-2.5, champ)
    bound = by_hand([-2.5 + e for e in noise], 0.05)
    assert reg["method"] == "paired" and reg["prompts"] == 10 and reg["bound"] == pytest.approx(bound, abs=1e-9)
    assert bound == pytest.approx(-2.7136, abs=1e-3) and not ok
    assert why == ("rouge_l candidate - champion v4 -2.47 paired over 10 prompts: its 95% lower bound -2.71 is not "
                   "above -margin -1 (a regression)")
    # the unpaired rule (no per-prompt scores) lets the same candidate through
    reg, (ok, why) = run(-2.5, champ | {"scores": {}})
    assert reg["method"] == "unpaired" and reg["why"] == "champion.json holds no per-prompt scores" and ok
    assert why.endswith("(10 prompts, no regression (unpaired: champion.json holds no per-prompt scores))")
    # 0.5 lower: below a narrow interval (from 22.0), unpaired a regression; paired within the margin
    narrow = champ | {"ci_low": 22.0}
    reg, (ok, why) = run(-0.5, narrow)
    assert reg["bound"] == pytest.approx(by_hand([-0.5 + e for e in noise], 0.05), abs=1e-9) and reg["bound"] > -1 and ok
    assert why.endswith("(10 prompts, no regression: candidate - champion -0.47, lower bound -0.71 paired over 10 prompts)")
    reg, (ok, why) = run(-0.5, narrow | {"scores": {}})
    assert not ok and why.startswith("rouge_l 21.63 is below champion v4's 95% interval (from 22.00; unpaired:")
    # the champion scored another test set: 5 prompts shared, fewer than MIN_PAIRED, so the interval decides
    assert MIN_PAIRED == 8
    few = champ | {"scores": {k: SERVICE[k] for k in PROMPTS[:5]} | {"other": 1.0}}
    reg, (ok, why) = run(-2.5, few)
    assert reg == {"version": "4", "method": "unpaired", "prompts": 5, "ci_low": 19.2,
                   "why": "5 test prompts shared with the champion, fewer than 8"}
    assert ok and why.endswith("(unpaired: 5 test prompts shared with the champion, fewer than 8))")
    # the champion was gated on another metric: no pairing, and the gate says why it cannot compare
    other = champ | {"metric": "chrf"}
    reg, (ok, why) = run(-0.5, other)
    assert reg is None and not ok and why.startswith("champion v4 was gated on chrf, this gate reads rouge_l")
    # the point mode keeps the paper's interval rule
    assert regression({"a": 1.0}, champ, GateParams(metric="rouge_l", mode="point", threshold=0), 0.05) == \
        {"version": "4", "method": "unpaired", "prompts": 0, "ci_low": 19.2}
