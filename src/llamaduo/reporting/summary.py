"""The report stage's figures: one summary of the cycle with the gate's pass/fail line against epsilon, the headline
`dvc metrics show` prints, the per-answer points `dvc plots` draws, and the cycle's service usage."""

from __future__ import annotations

import json
from pathlib import Path

from llamaduo.intervals import per_prompt
from llamaduo.judging.names import LOCAL
from llamaduo.judging.scores import answer_scores, select
from llamaduo.reporting.gate import JUDGE_METRICS, assess, decide, figures, power_warning, regression
from llamaduo.usage import total


def _load(path: str) -> dict:
    return json.loads(Path(path).read_text())


def prompt_scores(metric: str, *, judgments: list[dict], baseline_judgments: list[dict],
                  reference: list[dict]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Per test prompt, `metric` for the local model and for each service: a judge metric from the primary
    judge's judgments (local answers in judgments.parquet, the services' in baseline_judgments.parquet), a
    reference metric from the `reference` table (both answerers)."""
    if metric in JUDGE_METRICS:
        local = per_prompt(answer_scores(select(judgments, primary=True, answerer=LOCAL), metric))
        names = sorted({j["answerer"] for j in baseline_judgments})
        services = {s: per_prompt(answer_scores(select(baseline_judgments, primary=True, answerer=s), metric)) for s in names}
        return local, services
    rows = {}
    for r in reference:
        rows.setdefault(r["answerer"], {})[(r["prompt_id"], r["sample"])] = r[metric]
    local = per_prompt(rows.pop(LOCAL, {}))
    return local, {s: per_prompt(v) for s, v in sorted(rows.items())}


def summary(*, prepare: str, curate: str, train: str, infer: str, eval: str, champion: str, p,
            scores: tuple | None = None) -> dict:
    """`p` is the gate section: the mean of `p.metric` (a judge metric, or a reference metric from eval.json's
    `reference`) tested as `p.mode` asks at level `p.cycle_alpha` (this cycle's share of the loop's error; None = all of
    `p.alpha`) on `scores` (`prompt_scores`: per-prompt local and service scores), and (`p.no_regression`)
    against the champion's interval in `champion` (metrics/champion.json, `{}` when there is none). The loop
    promotes on exactly this decision."""
    ev, tr = _load(eval), _load(train)
    gated = figures(ev, p.metric)
    score = gated["mean"]
    # the interval as the judge stage computed it (judge.bootstrap, judge.seed)
    low, high = gated.get("ci95_low"), gated.get("ci95_high")
    ci = [low, high] if low is not None else None
    # the share of judgments (or answers) scored: `gate.min_scored_fraction` bars a mean over a few of them
    fraction = gated["scored_fraction"]
    local, services = scores or ({}, {})
    alpha = p.alpha if p.cycle_alpha is None else p.cycle_alpha
    test = assess(local, services, p, alpha)
    champ = _load(champion)
    reg = regression(local, champ, p, alpha)
    passed, reason = decide({"score": score, "scored_fraction": fraction, "test": test, "regression": reg}, champ, p)
    return {
        "split": _load(prepare),
        "synthetic_curated": _load(curate)["rows_out"],
        "train_rows": tr["rows"],
        "train_loss": tr["train_loss"],
        "infer_tokens_per_s": _load(infer)["tokens_per_s"],
        "precision": ev["precision"],
        "similarity": ev["similarity"],
        "failed_judgments": ev["failed_judgments"],
        # sequential judging: judgments paid against a full pass, and why it stopped (absent from an older eval.json)
        **({"judging": ev["sequential"]} if "sequential" in ev else {}),
        # the reference metrics' figures (mean, interval) beside the judge's; absent from an older eval.json
        **({"reference": {m: ev["reference"][m] for m in ev["reference"]["metrics"]}} if "reference" in ev else {}),
        "gate": {"metric": p.metric, "mode": p.mode, "threshold": p.threshold, "score": score, "scored_fraction": fraction,
                 "ci95": ci, "passed": passed, "reason": reason, "test": test, "power_warning": power_warning(test),
                 # the no-regression check against the champion: paired over shared prompts, or unpaired and why
                 **({"regression": reg} if reg else {})},
    }


def prompt_scores_record(metric: str, local: dict[str, float]) -> dict:
    """The gate metric's per-prompt scores of this cycle's model (reporting.gate.PROMPT_SCORES): at promotion they
    become the champion's, which the next candidates are paired with."""
    return {"metric": metric, "scores": {k: round(v, 6) for k, v in sorted(local.items())}}


def score_points(judgments: list[dict]) -> list[dict]:
    """One point per answer: its mean precision and similarity (the paper's Figure 3 axes), by the primary judge."""
    judgments = _primary(judgments)
    prec, sim = answer_scores(judgments, "precision"), answer_scores(judgments, "similarity")
    return [{"prompt_id": k[0], "sample": k[1], "precision": prec[k], "similarity": sim[k]} for k in sorted(prec)]


def _primary(judgments: list[dict]) -> list[dict]:
    """The primary judge's rows (judgments.parquet holds every judge of the panel)."""
    return select(judgments, primary=True)


def usage(metrics: list[dict]) -> dict:
    """The service calls of a cycle's stages (their metrics files' `usage` entries: flat, per provider, or with a
    `total`), added up."""
    def leaves(u: dict) -> list[dict]:
        if "calls" in u:
            return [u]
        if "total" in u:
            return leaves(u["total"])
        return [leaf for v in u.values() if isinstance(v, dict) for leaf in leaves(v)]

    return {"calls": 0, "cost_usd": 0.0} | total([u for m in metrics for u in leaves(m.get("usage") or {})])


def headline(s: dict, *, eval: dict, train: dict, spend: dict) -> dict:
    """metrics/headline.json, the one file `dvc metrics show`/`diff` print: the figures a reviewer compares between
    cycles and nothing else (~25 values with one judge; the usage counters, latencies and per-task internals stay
    in the other metrics files, which the loop, MLflow and the HTML report read). `s` is summary(), `spend`
    usage() of the cycle's service stages."""
    g = s["gate"]
    out = {
        "gate": {"metric": g["metric"], "mode": g.get("mode", "point"), "passed": g["passed"], "threshold": g["threshold"],
                 "scored_fraction": g.get("scored_fraction"), "reason": g["reason"],
                 # the tested estimate (mean, or mean paired difference) and its one-sided lower bound, where there
                 # are any (`dvc metrics` drops a null: the key would come and go)
                 **{k: v for k in ("estimate", "bound") if (v := (g.get("test") or {}).get(k)) is not None}},
        "judge": judge_figures(eval),
        "rows": {"train": s["train_rows"], "synthetic_curated": s["synthetic_curated"], "answers": eval.get("answers")},
        "loss": {"train": train.get("train_loss"), "validation": train.get("val_loss")},
        "cost": {"paid_calls": spend["calls"], "usd": round(spend["cost_usd"], 4)},
    }
    if "reference" in s:
        out["reference"] = {m: f["mean"] for m, f in s["reference"].items()}
    return out


def judge_figures(ev: dict) -> dict[str, dict]:
    """Each judge's figures in eval.json (`per_judge` for a panel, else the primary judge's at the top level), as
    the headline's `judge` block holds them and the loop's history records them: {judge: {metric: {mean, ci95_low,
    ci95_high, coverage_<zeta>..., p_match}}}."""
    judges = ev.get("per_judge") or ({ev["judge"]: ev} if "judge" in ev else {})
    out = {}
    for name, e in judges.items():
        out[name] = {}
        for m in JUDGE_METRICS:
            f = e.get(m) or {}
            out[name][m] = {k: v for k, v in f.items() if k in ("mean", "ci95_low", "ci95_high") or k.startswith("coverage_")}
            # P-Match of the mean (local over the best service); absent without a service baseline
            pm = ((e.get("p_match") or {}).get(m) or {}).get("mean")
            if pm is not None:
                out[name][m]["p_match"] = pm
    return out
