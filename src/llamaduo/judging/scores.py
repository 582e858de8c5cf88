"""Scores from judgments: V^j (mean of an answer's M judgments), mean score V, median, coverage C at each zeta,
bootstrap intervals, P-Match against the service baseline, pairwise win/tie/loss, and the judges' agreement;
then the reference metrics' summaries (rows of the `reference` table) and how well a judge tracks them.

Judgments that could not be used are counted (with their reasons) and excluded; an answer with no usable
judgment is left out of the scores, never scored as zero.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from itertools import combinations
from statistics import fmean, median

from llamaduo.judging.names import LOCAL, METRICS
from llamaduo.judging.reference import REFERENCE_METRICS


def answer_scores(judgments: list[dict], metric: str) -> dict[tuple, float]:
    """V^j per answer (prompt_id, sample): the mean of its parseable judgments; answers with none are left out.
    Pass the rows of one judge and one answerer (see `select`): the key does not tell them apart."""
    by_answer: dict[tuple, list[float]] = defaultdict(list)
    for j in judgments:
        if j["ok"]:
            by_answer[(j["prompt_id"], j["sample"])].append(j[metric])
    return {k: fmean(v) for k, v in by_answer.items()}


def score_stats(scores: list[float], zetas: list[int]) -> dict:
    """Count, mean V, median and coverage C at each zeta of per-answer scores (None without scores, never 0)."""
    entry = {"scored_answers": len(scores), "mean": round(fmean(scores), 3) if scores else None,
             "median": round(median(scores), 3) if scores else None}
    for z in zetas:
        entry[f"coverage_{z}"] = round(sum(s >= z for s in scores) / len(scores), 4) if scores else None
    return entry


def select(judgments: list[dict], *, judge: str | None = None, answerer: str | None = None,
           primary: bool | None = None) -> list[dict]:
    """The rows of one judge and/or one answerer (rows without an `answerer` column are the local model's)."""
    return [j for j in judgments
            if (judge is None or j["judge"] == judge)
            and (answerer is None or j.get("answerer", LOCAL) == answerer)
            and (primary is None or j.get("primary", True) == primary)]


_ORDERS = ("local first: ", "service first: ")  # a pairwise row's error names the order that failed
_HTTP_STATUS = re.compile(r"\bHTTP (\d{3})\b")
# "local first: X; service first: Y" (grading.pairwise_rows), split at the orders only: X may hold a "; " itself
_PAIR_ERRORS = re.compile(r"; (?=(?:local|service) first: )")


def _failure_kind(error: str) -> str:
    """The kind of failure an `error` is, for eval.json's `failure_reasons` counts: "not JSON (Expecting value at
    char 0)" and "not JSON (... at char 7)" are one kind. A call that failed for good ("request failed: provider
    `x` (model y): HTTP 400: <the vendor's text>", from the call engine) is counted by its status alone: the
    vendor's text varies per request. Kinds stay free text all the same (a refusal, a vendor without a status):
    fine as JSON keys, never an MLflow metric name as they stand."""
    order = next((o for o in _ORDERS if error.startswith(o)), "")
    body = error[len(order):]
    if body.startswith("request failed"):
        status = _HTTP_STATUS.search(body)
        kind = "request failed" + (f": HTTP {status.group(1)}" if status else "")
    else:
        kind = body.split(" (")[0]
    return order + (kind if len(kind) <= 80 else kind[:80] + "...")


def scored_fraction(judgments: list[dict]) -> float | None:
    """The share of judgments that gave a score (None without judgments): what `gate.min_scored_fraction` bars.
    Judgments, not answers: an answer with one usable judgment of M is in the mean, on a third of the evidence."""
    return round(sum(j["ok"] for j in judgments) / len(judgments), 4) if judgments else None


def summarize(judgments: list[dict], zetas: list[int], *, resamples: int | None = None, seed: int = 0) -> dict:
    """Mean, median and coverage per metric (with a bootstrap 95% interval of the mean when `resamples` is
    given); failures are counted and excluded, never scored as zero."""
    answers = {(j["prompt_id"], j["sample"]) for j in judgments}
    out = {
        "answers": len(answers),
        "judgments": len(judgments),
        "failed_judgments": sum(not j["ok"] for j in judgments),
        "scored_fraction": scored_fraction(judgments),
        "failure_reasons": dict(sorted(Counter(_failure_kind(j["error"]) for j in judgments if not j["ok"]).items())),
    }
    retried = [j for j in judgments if j.get("attempts", 1) > 1]
    if retried:
        out["retried_judgments"] = len(retried)
        out["recovered_by_retry"] = sum(j["ok"] for j in retried)
    for metric in METRICS:
        scores = list(answer_scores(judgments, metric).values())
        entry = score_stats(scores, zetas)
        if resamples:
            ci = bootstrap_ci(scores, resamples=resamples, seed=seed)
            entry["ci95_low"], entry["ci95_high"] = ci if ci else (None, None)
        out[metric] = entry
    return out


def by_task(judgments: list[dict], zetas: list[int]) -> dict:
    tasks = sorted({j["task"] for j in judgments})
    return {t: summarize([j for j in judgments if j["task"] == t], zetas) for t in tasks}


def by_category(judgments: list[dict], category_of: dict[str, str | None], zetas: list[int]) -> dict | None:
    """Per coverage category (the test row's `category`); None when there are fewer than two."""
    cats = {category_of.get(j["prompt_id"]) or "(none)" for j in judgments}
    if len(cats) < 2:
        return None
    return {c: summarize([j for j in judgments if (category_of.get(j["prompt_id"]) or "(none)") == c], zetas)
            for c in sorted(cats)}


def bootstrap_ci(scores: list[float], *, resamples: int, seed: int, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean; None without scores."""
    import numpy as np

    if not scores:
        return None
    rng = np.random.default_rng(seed)
    arr = np.asarray(scores, dtype=float)
    means = arr[rng.integers(0, len(arr), size=(resamples, len(arr)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return round(float(lo), 3), round(float(hi), 3)


# -- across judges


def panel_scores(judgments: list[dict], metric: str) -> dict[tuple, float]:
    """Per answer: the mean over judges of each judge's V^j (each judge weighs the same, whatever its failures)."""
    per: dict[tuple, list[float]] = defaultdict(list)
    for judge in sorted({j["judge"] for j in judgments}):
        for k, v in answer_scores(select(judgments, judge=judge), metric).items():
            per[k].append(v)
    return {k: fmean(v) for k, v in per.items()}


def panel_summary(judgments: list[dict], zetas: list[int]) -> dict:
    out = {}
    for metric in METRICS:
        scores = list(panel_scores(judgments, metric).values())
        entry = score_stats(scores, zetas)
        out[metric] = entry
    return out


def krippendorff_alpha_interval(units: list[list[float]]) -> float | None:
    """Krippendorff's alpha for interval data: 1 - D_o / D_e, over units (answers) holding one value per judge
    that scored them. Units with a single value are not pairable and are dropped. None when undefined."""
    units = [u for u in units if len(u) >= 2]
    values = [v for u in units for v in u]
    n = len(values)
    if n < 2:
        return None
    # observed disagreement: ordered pairs within each unit, weighted 1/(m_u - 1)
    d_o = sum(sum((a - b) ** 2 for i, a in enumerate(u) for k, b in enumerate(u) if i != k) / (len(u) - 1)
              for u in units) / n
    # expected disagreement: ordered pairs over all pairable values
    total = sum(values)
    sq = sum(v * v for v in values)
    d_e = (2 * n * sq - 2 * total * total) / (n * (n - 1))  # = sum over i != k of (v_i - v_k)^2, / n(n-1)
    if d_e == 0:
        return None
    return 1 - d_o / d_e


def agreement(judgments: list[dict], metric: str) -> dict:
    """The judges' agreement on per-answer scores V^j: Pearson and Spearman per pair of judges (answers both
    scored), and Krippendorff's alpha (interval) over the whole panel."""
    from scipy.stats import pearsonr, spearmanr

    judges = sorted({j["judge"] for j in judgments})
    scores = {judge: answer_scores(select(judgments, judge=judge), metric) for judge in judges}
    pairs = {}
    for a, b in combinations(judges, 2):
        common = sorted(set(scores[a]) & set(scores[b]))
        x, y = [scores[a][k] for k in common], [scores[b][k] for k in common]
        # correlation is undefined with fewer than 3 points or a constant side
        defined = len(common) >= 3 and len(set(x)) > 1 and len(set(y)) > 1
        pairs[f"{a}~{b}"] = {"answers": len(common),
                             "pearson": round(float(pearsonr(x, y)[0]), 4) if defined else None,
                             "spearman": round(float(spearmanr(x, y)[0]), 4) if defined else None}
    keys = sorted({k for s in scores.values() for k in s})
    alpha = krippendorff_alpha_interval([[scores[j][k] for j in judges if k in scores[j]] for k in keys])
    return {"pairs": pairs, "krippendorff_alpha_interval": round(alpha, 4) if alpha is not None else None}


def repeat_spread(judgments: list[dict], metric: str) -> float | None:
    """Mean over answers of the standard deviation of their M usable judgments: how much one judge's repeats differ."""
    from statistics import pstdev

    by_answer: dict[tuple, list[float]] = defaultdict(list)
    for j in judgments:
        if j["ok"]:
            by_answer[(j["prompt_id"], j["sample"])].append(j[metric])
    spreads = [pstdev(v) for v in by_answer.values() if len(v) >= 2]
    return round(fmean(spreads), 3) if spreads else None


# -- against the service baseline


def p_match(local: dict, services: dict[str, dict], zetas: list[int], metrics=METRICS) -> dict:
    """P-Match (the paper's Table 1): the local model's figure divided by the best service's, per metric and per
    statistic (mean, coverage at each zeta). `local` and each service entry are `summarize` outputs (or
    `reference_summary` ones, with the reference metrics and no zetas)."""
    out = {}
    for metric in metrics:
        entry = {}
        for stat in ["mean"] + [f"coverage_{z}" for z in zetas]:
            theirs = {name: s[metric][stat] for name, s in services.items() if s[metric][stat] is not None}
            ours = local[metric][stat]
            if not theirs or ours is None:
                entry[stat] = None
                continue
            best = max(theirs, key=theirs.get)
            entry[stat] = round(ours / theirs[best], 4) if theirs[best] else None
            entry[f"{stat}_best_service"] = best
        out[metric] = entry
    return out


def pairwise_summary(rows: list[dict]) -> dict:
    """Win/tie/loss rates of the local model over the comparisons that were judged in both orders."""
    ok = [r for r in rows if r["ok"]]
    counts = Counter(r["outcome"] for r in ok)
    out = {"comparisons": len(rows), "judged": len(ok), "failed": len(rows) - len(ok),
           "failure_reasons": dict(sorted(Counter(_failure_kind(e) for r in rows if not r["ok"]
                                                 for e in _PAIR_ERRORS.split(r["error"])).items())),
           "wins": counts["win"], "ties": counts["tie"], "losses": counts["loss"],
           "flipped": sum(bool(r["flipped"]) for r in ok)}
    for name, key in (("win_rate", "win"), ("tie_rate", "tie"), ("loss_rate", "loss")):
        out[name] = round(counts[key] / len(ok), 4) if ok else None
    # the share of comparisons whose preference changed with the order: the judge's position bias
    out["flip_rate"] = round(out["flipped"] / len(ok), 4) if ok else None
    return out


# -- against the reference (no judge): rows of the `reference` table


def reference_summary(rows: list[dict], *, resamples: int | None = None, seed: int = 0) -> dict:
    """Per reference metric: count, mean, median and (with `resamples`) the bootstrap 95% interval of the mean,
    over the given answers (one answerer's rows). Coverage at zeta stays a judge figure."""
    out = {"answers": len(rows)}
    for metric in REFERENCE_METRICS:
        scores = [r[metric] for r in rows]
        entry = score_stats(scores, [])
        if resamples:
            ci = bootstrap_ci(scores, resamples=resamples, seed=seed)
            entry["ci95_low"], entry["ci95_high"] = ci if ci else (None, None)
        out[metric] = entry
    return out


def reference_by_task(rows: list[dict], *, resamples: int | None = None, seed: int = 0) -> dict:
    return {t: reference_summary([r for r in rows if r["task"] == t], resamples=resamples, seed=seed)
            for t in sorted({r["task"] for r in rows})}


def judge_vs_reference(judgments: list[dict], reference: list[dict]) -> dict:
    """How well one judge tracks the reference metrics: Spearman, per answer, between its V^j (each judge metric)
    and each reference metric, over the answers both scored (every answerer in `reference`, keyed with it).
    None where undefined (fewer than 3 answers, or a constant side: exact match is often all 0)."""
    from scipy.stats import spearmanr

    ref = {(r["answerer"], r["prompt_id"], r["sample"]): r for r in reference}
    answerers = sorted({r["answerer"] for r in reference})
    out = {}
    for jm in METRICS:
        judged = {(who, *k): v for who in answerers for k, v in answer_scores(select(judgments, answerer=who), jm).items()}
        common = sorted(set(judged) & set(ref))
        entry = {}
        for rm in REFERENCE_METRICS:
            x, y = [judged[k] for k in common], [ref[k][rm] for k in common]
            defined = len(common) >= 3 and len(set(x)) > 1 and len(set(y)) > 1
            entry[rm] = round(float(spearmanr(x, y)[0]), 4) if defined else None
        out[jm] = {"answers": len(common), "spearman": entry}
    return out
