"""The promotion gate: does this cycle's model replace the champion? One decision, with its reason.

`gate.metric` is a judge metric (precision, similarity: eval.json's top level, the primary judge's) or a
reference metric (rouge_l, chrf, exact_match: eval.json's `reference`, no judge involved). `gate.mode` is the
question the gate answers:

- `non_inferiority`: is the local model no worse than the best service by more than `gate.margin`? The paired
  difference local - service over the test prompts both answered: its one-sided lower bound must be above -margin;
- `threshold`: is the local model's true mean above `gate.threshold`? The one-sided lower bound must be above it;
- `point`: the paper's rule, the mean itself at or above the threshold (no interval; a model just below the bar
  passes about half the time).

Each bound is at this cycle's share of the loop's error (llamaduo.intervals.cycle_alpha).

The no-regression check against the champion (`gate.no_regression`) is paired where the test set allows: champion.json
holds the champion's per-prompt scores of the gate metric, and with at least MIN_PAIRED prompts shared the paired
difference candidate - champion needs a lower bound above -margin; otherwise (fewer shared prompts, a champion
written without its scores, or the `point` mode) the candidate's mean must not be below the champion's 95%
interval."""

from __future__ import annotations

import math
from statistics import fmean

from llamaduo import intervals
from llamaduo.errors import DataError
from llamaduo.judging.names import METRICS as JUDGE_METRICS

# where the report stage writes the gate metric's per-prompt scores, under the metrics folder the loop logs with each
# cycle's run (a subfolder: the loop flattens only metrics/*.json into MLflow metrics, one per key, and a per-prompt
# table is not a metric); the registry copies the promoted version's into champion.json
PROMPT_SCORES = "metrics/prompt_scores/gate.json"
# the fewest prompts shared with the champion for the paired no-regression check: below it the t quantile and the
# skewness behind the bound come from too few differences (t(0.975, 6 df) = 2.45 against 2.13 at 15), and the
# unpaired rule, which reads every candidate prompt, is the better evidence
MIN_PAIRED = 8
REFERENCE_METRICS = ("rouge_l", "chrf", "exact_match")  # = llamaduo.judging.reference.REFERENCE_METRICS (a test checks)


def figures(ev: dict, metric: str) -> dict:
    """The gate metric's entry in eval.json (`mean`, `ci95_low`, `ci95_high` ...), with `scored_fraction`: the
    share of judgments (primary judge) or, for a reference metric, of answers that gave a score; None in an
    eval.json written before it was recorded."""
    if metric in REFERENCE_METRICS:
        ref = ev.get("reference")
        if not ref or metric not in ref:
            raise DataError(f"`gate.metric: {metric}` reads eval.json's `reference` section, which it does not hold; "
                            "rerun the judge stage (it writes the reference metrics)")
        return dict(ref[metric], scored_fraction=ref.get("scored_fraction"))
    return dict(ev[metric], scored_fraction=ev.get("scored_fraction"))


def _percent(fraction: float) -> str:
    # rounded down, so a share just under the bar never reads as the bar itself (0.8999 -> 89.9%, not 90%)
    return f"{math.floor(fraction * 1000) / 10:g}%"


def question(p) -> str:
    """The question the gate answers, in words (the report prints it beside the verdict)."""
    if p.mode == "non_inferiority":
        return f"is the local model's {p.metric} no more than {p.margin:g} points below the best service's?"
    if p.mode == "threshold":
        return f"is the local model's true mean {p.metric} above {p.threshold:g}?"
    return f"is the local model's mean {p.metric} over this test set at least {p.threshold:g}? (point estimate)"


def power_target(p, estimate: float | None) -> tuple[float, str]:
    """(the difference the gate's power is quoted against, what it is in words): `gate.margin` under non-inferiority;
    under threshold the distance the estimate sits above the bar, and the margin while it is below the bar or not
    measured yet (it stands for "a model this much better")."""
    if p.mode == "threshold" and estimate is not None and estimate > p.threshold:
        return round(estimate - p.threshold, 3), "the distance to the threshold"
    return p.margin, "the margin"


def power(p, sd: float | None, prompts: int | None, estimate: float | None, alpha: float) -> dict:
    """The gate's power at level `alpha` with `prompts` test prompts at the spread `sd`: the difference it asks about
    (`target`, and what that is in words, `target_is`: `power_target`), the smallest difference it detects at 80%
    power, whether that is wider than the target (`underpowered`), and the test prompts the target needs; a figure
    is None where the spread, or enough prompts for an interval, is missing."""
    target, target_is = power_target(p, estimate)
    out = {"target": target, "target_is": target_is, "detectable": None, "underpowered": None, "prompts_needed": None}
    if sd is None or prompts is None:
        return out
    out["prompts_needed"] = intervals.prompts_needed(sd, target, alpha)
    detectable = intervals.detectable(sd, prompts, alpha)
    if detectable is not None:
        out["detectable"] = round(detectable, 3)
        out["underpowered"] = out["detectable"] > target
    return out


def assess(local: dict[str, float], services: dict[str, dict[str, float]], p, alpha: float) -> dict:
    """The gate's test on per-prompt scores of `p.metric`: `local` {prompt: score}, `services` {service: {prompt:
    score}} (the baseline's answers). Returns the figures summary.json's `gate` holds beside the decision: the
    estimate (mean, or mean paired difference), its one-sided lower bound at level `alpha`, the spread, and
    the smallest difference detectable at 80% power with the prompts needed when that is wider than the bar's
    distance."""
    out = {"mode": p.mode, "question": question(p), "alpha": alpha}
    if p.mode == "non_inferiority":
        usable = {s: v for s, v in services.items() if set(v) & set(local)}
        if not usable:
            return out | {"prompts": 0, "estimate": None, "bound": None, "against": -p.margin}
        # the best service on the gate metric, by its mean over the prompts both answered
        best = max(sorted(usable), key=lambda s: fmean(usable[s][k] for k in set(usable[s]) & set(local)))
        values = intervals.paired(local, usable[best])
        out |= {"best_service": best, "against": -p.margin}
    else:
        values = [local[k] for k in sorted(local)]
        out["against"] = p.threshold
    n = len(values)
    estimate = fmean(values) if values else None
    out |= {"prompts": n, "estimate": round(estimate, 3) if estimate is not None else None}
    if p.mode == "point":
        return out | {"bound": out["estimate"]}
    bound = intervals.lower_bound(values, alpha)
    sd = intervals.spread(values)
    # the bound as computed: the decision compares it with the bar, and rounding could move it across
    out |= {"bound": bound, "sd": round(sd, 3) if sd is not None else None}
    if sd is None:
        return out
    pw = power(p, sd, n, estimate, alpha)
    out |= {k: pw[k] for k in ("detectable", "target", "underpowered")}
    if pw["underpowered"]:
        out["prompts_needed"] = pw["prompts_needed"]
    return out


def regression(local: dict[str, float], champion: dict | None, p, alpha: float) -> dict | None:
    """The no-regression check's figures (summary.json's `gate.regression`), None without a champion or with the
    check off. `paired`: candidate - champion over the prompts both scored, its one-sided lower bound at `alpha`
    against -margin; `unpaired`: the candidate's mean against the champion's 95% interval (the reason: `why`)."""
    if not p.no_regression or not champion or (champion.get("ci_low") is None and not champion.get("scores")):
        return None
    if champion.get("metric") not in (None, p.metric):
        return None  # figures of another metric: `decide` refuses the comparison and says so
    out = {"version": champion.get("version")}
    theirs = champion.get("scores") or {}
    shared = len(set(theirs) & set(local))
    if p.mode == "point":  # the paper's rule, whole: the mean against the champion's interval
        return out | {"method": "unpaired", "prompts": shared, "ci_low": champion.get("ci_low")}
    if not theirs:
        why = "champion.json holds no per-prompt scores"
    elif shared < MIN_PAIRED:
        why = f"{shared} test prompts shared with the champion, fewer than {MIN_PAIRED}"
    else:
        d = intervals.paired(local, {k: float(v) for k, v in theirs.items()})
        return out | {"method": "paired", "prompts": shared, "alpha": alpha, "against": -p.margin, "estimate": round(fmean(d), 3),
                      "bound": intervals.lower_bound(d, alpha)}
    return out | {"method": "unpaired", "why": why, "prompts": shared, "ci_low": champion.get("ci_low")}


def power_warning(test: dict) -> str | None:
    """A line for the report when the test set cannot see the difference the gate asks about."""
    if not test.get("underpowered"):
        return None
    need = test.get("prompts_needed")
    more = f"about {need} test prompts would detect it" if need else "no test set of a sensible size detects it"
    return (f"{test['prompts']} test prompts detect a difference of {test['detectable']:.1f} points at 80% power "
            f"(alpha {test['alpha']:.4g}), more than the {test['target']:.1f} the gate asks about: {more} "
            f"(at the measured spread {test['sd']:.1f})")


def decide(gate: dict, champion: dict | None, p) -> tuple[bool, str]:
    """`gate` holds this cycle's `score` and `scored_fraction` (metrics/summary.json's `gate` entry) and, for
    the interval modes, `test` (what `assess` returned), and `regression` (what `regression` returned; absent: the
    unpaired rule); `champion` the current champion's figures as metrics/champion.json holds them (`version`,
    `metric`, `ci_low`, `scores`), or None / {} when there is none."""
    score = gate.get("score")
    if score is None:
        why = "every judgment failed" if p.metric in JUDGE_METRICS else "no answers"
        return False, f"no scored answers for `{p.metric}` ({why})"
    # a mean over the few answers the judge could grade is no evidence (its failures are not random: long,
    # odd or refused answers fail first), however high it is
    what = "judgments" if p.metric in JUDGE_METRICS else "answers"
    fraction = gate.get("scored_fraction")
    if fraction is None and p.min_scored_fraction > 0:
        return False, ("eval.json records no `scored_fraction` (written before `gate.min_scored_fraction` existed): "
                       "rerun the judge stage")
    if fraction is not None and fraction < p.min_scored_fraction:
        return False, (f"only {_percent(fraction)} of {what} scored for `{p.metric}`, "
                       f"`gate.min_scored_fraction` is {p.min_scored_fraction:g}")
    test = gate.get("test") or {}
    level = f"{100 * (1 - test.get('alpha', 0)):.4g}%"
    if p.mode == "point" and p.threshold is not None and score < p.threshold:
        return False, f"{p.metric} {score:.2f} is below the threshold {p.threshold:g}"
    if p.mode != "point":
        if test.get("bound") is None:
            if p.mode == "non_inferiority" and not test.get("prompts"):
                return False, (f"no service answers to compare with on `{p.metric}`: non-inferiority needs the "
                               "baseline (`judge.baseline.services`)")
            return False, f"fewer than 2 test prompts scored for `{p.metric}`: no interval"
        if test["bound"] <= test["against"]:
            what = (f"{p.metric} local - {test['best_service']} {test['estimate']:+.2f}" if p.mode == "non_inferiority"
                    else f"{p.metric} {test['estimate']:.2f}")
            bar = f"-margin {-p.margin:g}" if p.mode == "non_inferiority" else f"the threshold {p.threshold:g}"
            return False, (f"{what}: its {level} lower bound {test['bound']:.2f} is not above {bar} "
                           f"({test['prompts']} prompts)")
    if p.no_regression and champion and (champion.get("ci_low") is not None or champion.get("scores")):
        theirs = champion.get("metric")  # absent: a champion.json written by hand; its figures are taken as this metric's
        if theirs is not None and theirs != p.metric:
            # figures of another metric are no bar for this one; passing anyway would skip the no-regression check
            return False, (f"champion v{champion['version']} was gated on {theirs}, this gate reads {p.metric}: no "
                           f"comparable interval (set `gate.metric: {theirs}` or promote by hand)")
        reg = gate.get("regression") or {"method": "unpaired", "ci_low": champion.get("ci_low")}
        if reg["method"] == "paired":
            if reg["bound"] <= reg["against"]:
                return False, (f"{p.metric} candidate - champion v{champion['version']} {reg['estimate']:+.2f} paired over "
                               f"{reg['prompts']} prompts: its {100 * (1 - reg['alpha']):.4g}% lower bound "
                               f"{reg['bound']:.2f} is not above -margin {-p.margin:g} (a regression)")
        elif reg.get("ci_low") is not None and score < float(reg["ci_low"]):
            since = f"; unpaired: {reg['why']}" if reg.get("why") else ""
            return False, (f"{p.metric} {score:.2f} is below champion v{champion['version']}'s 95% interval "
                           f"(from {float(reg['ci_low']):.2f}{since})")
    reg = gate.get("regression") or {}
    also = ""
    if champion and p.no_regression:
        if reg.get("method") == "paired":
            also = (f", no regression: candidate - champion {reg['estimate']:+.2f}, lower bound {reg['bound']:.2f} "
                    f"paired over {reg['prompts']} prompts")
        else:
            also = f", no regression (unpaired: {reg['why']})" if reg.get("why") else ", no regression"
    if p.mode == "non_inferiority":
        return True, (f"{p.metric} local - {test['best_service']} {test['estimate']:+.2f}, {level} lower bound "
                      f"{test['bound']:.2f} > -margin {-p.margin:g}: no worse than the service ({test['prompts']} prompts{also})")
    if p.mode == "threshold":
        return True, (f"{p.metric} {test['estimate']:.2f}, {level} lower bound {test['bound']:.2f} > threshold "
                      f"{p.threshold:g} ({test['prompts']} prompts{also})")
    bar = f"threshold {p.threshold:g}" if p.threshold is not None else "no threshold"
    return True, f"{p.metric} {score:.2f} passes ({bar}{also})"
