"""The statistics behind the gate: one-sided bounds on per-prompt scores, the paired difference against a
service, the error each cycle of a loop may spend, the power the test set gives, and the chance that a test set
judged in part passes once judged in full.

The unit is the test prompt. The local model answers each prompt `infer.k` times and the judge grades each answer
M times; those repeats share the prompt, so they are averaged into one score per prompt before any interval
(counting 64 answers to 16 prompts as 64 independent draws would make every interval too narrow). The bound is
the lower of Student's t bound and Hall's skewness-corrected one (`lower_bounds` says why); the power is the
noncentral t's, as a one-sided one-sample t test has it (an approximation for the combined bound, which is a little
more conservative).
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


def lower_bounds(x, alpha: float):
    """The one-sided (1 - alpha) lower confidence bound of the mean of each row of `x` (the last axis holds one
    row's values; at least 2 of them): the lower of Student's t bound and Hall's skewness-corrected one.

    Per-prompt scores are skewed (a judge's scores pile up at the top of the scale, a few answers fail badly), and
    with a long lower tail the t bound passes too often at small n: a sample that misses the tail has a high mean
    and a small spread together (bench/results/gate.json, 15 prompts: up to 0.060 of whole loops at a nominal 0.05).
    Hall's transformation (Hall 1992, "On the removal of skewness by transformation", JRSS B 54) removes the t
    statistic's first-order skew term, cube-root invertible so the bound is monotone; alone it still reaches 0.055
    there, since 15 prompts estimate the skewness poorly, and it raises the bound under right skew. Taking the lower
    of the two bounds never exceeds the t bound's own error under right skew and holds the left-skewed case to 0.048,
    for a few points of power under normal noise. Closed form: deterministic, no resampling."""
    import numpy as np

    return np.minimum(*t_and_hall_bounds(x, alpha))


def t_and_hall_bounds(x, alpha: float):
    """Student's t and Hall's skewness-corrected one-sided (1 - alpha) lower bounds of the mean of each row of `x`,
    each alone (`lower_bounds` takes the lower; bench/gate.py measures each)."""
    import numpy as np
    from scipy.stats import skew
    from scipy.stats import t as student

    x = np.asarray(x, dtype=float)
    n = x.shape[-1]
    mean, sd = x.mean(axis=-1), x.std(axis=-1, ddof=1)
    crit = student.ppf(1 - alpha, n - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = np.nan_to_num(skew(x, axis=-1, bias=False))  # no spread: no skewness (the bound is the value itself)
    # Hall: T_H = T + a T^2 + a^2 T^3 / 3 + b with a = g / (3 sqrt n), b = g / (6 sqrt n), so that
    # T_H = ((1 + a T)^3 - 1) / (3 a) + b, inverted at the t quantile
    a, b = g / (3 * math.sqrt(n)), g / (6 * math.sqrt(n))
    safe = np.where(a == 0, 1.0, a)
    hall_crit = np.where(a == 0, crit - b, (np.cbrt(1 + 3 * a * (crit - b)) - 1) / safe)
    half = sd / math.sqrt(n)
    return mean - crit * half, mean - hall_crit * half


def lower_bound(values: list[float], alpha: float) -> float | None:
    """The one-sided (1 - alpha) lower confidence bound of the mean (`lower_bounds`); None with fewer than 2
    values. Identical values have no spread to bound: the bound is their value."""
    if len(values) < 2:
        return None
    if max(values) == min(values):
        return float(values[0])
    return float(lower_bounds(values, alpha))


def pass_chance(judged, total: int, bar: float, alpha: float):
    """The chance that the gate's test passes once all `total` prompts are scored, predicted from the scores of the
    ones judged so far (each row of `judged`, at least 2 of them; numpy broadcasting over rows).

    The prediction is Bayesian predictive power (Spiegelhalter, Freedman & Blackburn 1986): under a flat prior on
    the mean (and on the log of the spread), the mean M of the n2 prompts still to judge, given the n1 judged with
    mean m and sd s, is m + s sqrt(1/n1 + 1/n2) T with T ~ t(n1 - 1). The whole set passes when its mean
    (n1 m + n2 M) / N clears c = bar + t(1 - alpha, N - 1) s / sqrt(N), Student's t bound at the judged spread, so
    the chance is P(T > (c - m) sqrt(N n1 / n2) / s). The gate's own bound (`lower_bounds`) is never above the t
    bound, so the real chance is at most this one. With no prompt left it is 1 or 0; with no spread so far, 1 when
    the mean is above the bar and 0 otherwise."""
    import numpy as np
    from scipy.stats import t as student

    x = np.asarray(judged, dtype=float)
    n1 = x.shape[-1]
    n2 = total - n1
    mean, sd = x.mean(axis=-1), x.std(axis=-1, ddof=1)
    c = bar + student.ppf(1 - alpha, total - 1) * sd / math.sqrt(total)
    if n2 <= 0:
        return np.where(mean > c, 1.0, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (c - mean) * math.sqrt(total * n1 / n2) / sd
    return np.where(sd > 0, student.sf(np.nan_to_num(z), n1 - 1), np.where(mean > bar, 1.0, 0.0))


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
