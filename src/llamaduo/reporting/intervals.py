"""The statistics behind the gate: one-sided t bounds on per-prompt scores, the paired difference against a
service, the error each cycle of a loop may spend, and the power the test set gives.

The unit is the test prompt. The local model answers each prompt `infer.k` times and the judge grades each answer
M times; those repeats share the prompt, so they are averaged into one score per prompt before any interval
(counting 64 answers to 16 prompts as 64 independent draws would make every interval too narrow). The t interval
is scipy's (`ttest_1samp`'s one-sided confidence interval); the power is the noncentral t's, as a one-sided
one-sample t test has it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import fmean, stdev

POWER = 0.8  # the power the report's detectable difference is quoted at


def per_prompt(scores: dict[tuple, float]) -> dict[str, float]:
    """{(prompt_id, sample): score} -> {prompt_id: mean over its samples}."""
    by: dict[str, list[float]] = defaultdict(list)
    for (prompt, _sample), v in scores.items():
        by[prompt].append(v)
    return {k: fmean(v) for k, v in sorted(by.items())}


def lower_bound(values: list[float], alpha: float) -> float | None:
    """The one-sided (1 - alpha) lower confidence bound of the mean (Student's t); None with fewer than 2 values.
    Identical values have no spread to bound: the bound is their value."""
    from scipy.stats import ttest_1samp

    if len(values) < 2:
        return None
    if max(values) == min(values):
        return float(values[0])
    ci = ttest_1samp(values, 0.0, alternative="greater").confidence_interval(confidence_level=1 - alpha)
    return float(ci.low)


def upper_bound(values: list[float], alpha: float) -> float | None:
    """The one-sided (1 - alpha) upper confidence bound of the mean (Student's t); None with fewer than 2 values."""
    from scipy.stats import ttest_1samp

    if len(values) < 2:
        return None
    if max(values) == min(values):
        return float(values[0])
    ci = ttest_1samp(values, 0.0, alternative="less").confidence_interval(confidence_level=1 - alpha)
    return float(ci.high)


def cycle_alpha(total: float, spent: float, cycle: int, max_cycles: int) -> float:
    """The error this cycle's gate may spend: what the loop has left, split evenly over the cycles left (this one
    included). Every cycle that tests spends its share, so the shares add up to at most `total` over the whole
    loop, and by the union bound P(any false pass in the loop) <= total, however the cycles' tests correlate
    (they share one test set)."""
    left = max(total - spent, 0.0)
    cycles_left = max(max_cycles - cycle, 1)  # a cycle past `loop.max_cycles` (a manual run) gets what is left
    return left / cycles_left


def power_at(delta: float, sd: float, n: int, alpha: float) -> float:
    """Power of the one-sided one-sample t test at level alpha to detect a true shift `delta` with spread `sd`."""
    from scipy.stats import nct, t

    if n < 2:
        return 0.0
    crit = t.ppf(1 - alpha, n - 1)
    return float(nct.sf(crit, n - 1, delta * math.sqrt(n) / sd))


def detectable(sd: float, n: int, alpha: float, power: float = POWER) -> float | None:
    """The smallest true difference (from the bar, or from -margin) the test detects with `power` at level
    `alpha`, on `n` prompts whose scores spread `sd`; None with fewer than 2 prompts, 0 without spread."""
    from scipy.optimize import brentq

    if n < 2:
        return None
    if sd == 0:
        return 0.0
    hi = sd
    while power_at(hi, sd, n, alpha) < power:
        hi *= 2
    return float(brentq(lambda d: power_at(d, sd, n, alpha) - power, 0.0, hi, xtol=1e-6))


def prompts_needed(sd: float, delta: float, alpha: float, power: float = POWER, *, cap: int = 1_000_000) -> int | None:
    """The fewest test prompts at which a true difference `delta` is detected with `power` (None: `delta` <= 0,
    or more than `cap` prompts)."""
    if delta <= 0:
        return None
    if sd == 0:
        return 2
    lo, hi = 2, 4
    while power_at(delta, sd, hi, alpha) < power:
        lo, hi = hi, hi * 2
        if hi > cap:
            return None
    while lo < hi:  # power grows with n: the first n that reaches it
        mid = (lo + hi) // 2
        if power_at(delta, sd, mid, alpha) >= power:
            hi = mid
        else:
            lo = mid + 1
    return lo


def paired(local: dict[str, float], service: dict[str, float]) -> list[float]:
    """local - service on the prompts both scored, in prompt order."""
    return [local[k] - service[k] for k in sorted(set(local) & set(service))]


def spread(values: list[float]) -> float | None:
    return stdev(values) if len(values) >= 2 else None
