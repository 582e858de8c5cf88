"""The promotion gate: does this cycle's model replace the champion? One decision, with its reason.

`gate.metric` is a judge metric (precision, similarity: eval.json's top level, the primary judge's) or a
reference metric (rouge_l, chrf, exact_match: eval.json's `reference`, no judge involved)."""

from __future__ import annotations

import math

from llamaduo.errors import DataError

JUDGE_METRICS = ("precision", "similarity")
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


def decide(gate: dict, champion: dict | None, p) -> tuple[bool, str]:
    """`gate` holds this cycle's `score` and `scored_fraction` (metrics/summary.json's `gate` entry); `champion`
    the current champion's figures as metrics/champion.json holds them (`version`, `metric`, `ci_low`), or
    None / {} when there is none."""
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
    if p.threshold is not None and score < p.threshold:
        return False, f"{p.metric} {score:.2f} is below the threshold {p.threshold:g}"
    if p.no_regression and champion and champion.get("ci_low") is not None:
        theirs = champion.get("metric")  # absent: a champion.json written by hand; its interval is taken as this metric's
        if theirs is not None and theirs != p.metric:
            # an interval of another metric is no bar for this one; passing anyway would skip the no-regression check
            return False, (f"champion v{champion['version']} was gated on {theirs}, this gate reads {p.metric}: no "
                           f"comparable interval (set `gate.metric: {theirs}` or promote by hand)")
        low = float(champion["ci_low"])
        if score < low:
            return False, (f"{p.metric} {score:.2f} is below champion v{champion['version']}'s 95% interval "
                           f"(from {low:.2f})")
    bar = f"threshold {p.threshold:g}" if p.threshold is not None else "no threshold"
    return True, f"{p.metric} {score:.2f} passes ({bar}{', no regression' if champion and p.no_regression else ''})"
