"""Scores from judgments: V^j (mean of an answer's M judgments), mean score V and coverage C at each zeta."""

from __future__ import annotations

from collections import defaultdict
from statistics import fmean

from llamaduo.judging import METRICS


def answer_scores(judgments: list[dict], metric: str) -> dict[tuple, float]:
    """V^j per answer (prompt_id, sample): the mean of its parseable judgments; answers with none are left out."""
    by_answer: dict[tuple, list[float]] = defaultdict(list)
    for j in judgments:
        if j["ok"]:
            by_answer[(j["prompt_id"], j["sample"])].append(j[metric])
    return {k: fmean(v) for k, v in by_answer.items()}


def summarize(judgments: list[dict], zetas: list[int]) -> dict:
    """Mean and coverage per metric; failures are counted and excluded, never scored as zero."""
    answers = {(j["prompt_id"], j["sample"]) for j in judgments}
    out = {
        "answers": len(answers),
        "judgments": len(judgments),
        "failed_judgments": sum(not j["ok"] for j in judgments),
    }
    failures: dict[str, int] = defaultdict(int)
    for j in judgments:
        if not j["ok"]:
            failures[j["error"].split(" (")[0]] += 1
    out["failure_reasons"] = dict(sorted(failures.items()))
    for metric in METRICS:
        v = answer_scores(judgments, metric)
        scores = list(v.values())
        entry = {"scored_answers": len(scores), "mean": round(fmean(scores), 3) if scores else None}
        for z in zetas:
            entry[f"coverage_{z}"] = round(sum(s >= z for s in scores) / len(scores), 4) if scores else None
        out[metric] = entry
    return out


def by_task(judgments: list[dict], zetas: list[int]) -> dict:
    tasks = sorted({j["task"] for j in judgments})
    return {t: summarize([j for j in judgments if j["task"] == t], zetas) for t in tasks}
