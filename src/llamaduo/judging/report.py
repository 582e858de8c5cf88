"""The judge stages' reports: metrics/eval.json (the primary judge's figures, per judge, across the panel,
against the service baseline, pairwise, per task and category; the reference metrics beside them),
metrics/baseline.json, and the worst answers."""

from __future__ import annotations

from collections import defaultdict

from llamaduo.judging.names import LOCAL, METRICS
from llamaduo.judging.reference import REFERENCE_METRICS
from llamaduo.judging.scores import (
    agreement,
    answer_scores,
    by_category,
    by_task,
    judge_vs_reference,
    p_match,
    pairwise_summary,
    panel_summary,
    reference_by_task,
    reference_summary,
    repeat_spread,
    select,
    summarize,
)


def worst_answers(judgments: list[dict], *, n: int, test_by_id: dict[str, dict], answers: list[dict],
                  excerpt: int = 300) -> list[dict]:
    """The n lowest-scored answers (by precision, then similarity) of the given judge's rows, with its reasons."""
    if n <= 0:
        return []
    prec, sim = answer_scores(judgments, "precision"), answer_scores(judgments, "similarity")
    text = {(a["prompt_id"], a["sample"]): a["answer"] for a in answers}
    reasons: dict[tuple, list[str]] = defaultdict(list)
    for j in judgments:
        if j["ok"] and j.get("reason"):
            reasons[(j["prompt_id"], j["sample"])].append(j["reason"])
    keys = sorted(prec, key=lambda k: (prec[k], sim.get(k, 0), k))[:n]
    return [{"prompt_id": k[0], "sample": k[1], "precision": round(prec[k], 2), "similarity": round(sim[k], 2),
             "reasons": reasons.get(k, []),
             "instruction": test_by_id.get(k[0], {}).get("instruction", "")[:excerpt],
             "answer": text.get(k, "")[:excerpt]} for k in keys]


def reference_report(reference: list[dict], *, primary_judgments: list[dict], boot: dict) -> dict:
    """eval.json's `reference`: the local answers' reference metrics (mean, median, 95% interval) at its top level
    (what the gate reads when `gate.metric` is one of them), each service's, P-Match (local / best service),
    the primary judge's per-answer Spearman with each metric (local answers; with services also over all
    answers, where the spread between answerers gives the judge more to track), and the figures per task."""
    local = [r for r in reference if r["answerer"] == LOCAL]
    services = sorted({r["answerer"] for r in reference} - {LOCAL})
    # every answer gets its reference metrics, so this is 1 unless answers the judge saw have none: the gate's
    # `gate.min_scored_fraction` reads it when `gate.metric` is a reference metric
    scored = {(r["prompt_id"], r["sample"]) for r in local}
    answers = scored | {(j["prompt_id"], j["sample"]) for j in select(primary_judgments, answerer=LOCAL)}
    out = {"metrics": list(REFERENCE_METRICS), **reference_summary(local, **boot),
           "scored_fraction": round(len(scored) / len(answers), 4) if answers else None}
    agreement = {"local": judge_vs_reference(select(primary_judgments, answerer=LOCAL), local)}
    if services:
        svc = {s: reference_summary([r for r in reference if r["answerer"] == s], **boot) for s in services}
        out["services"] = svc
        out["p_match"] = p_match(out, svc, [], metrics=REFERENCE_METRICS)
        agreement["all"] = judge_vs_reference(primary_judgments, reference)
    out["judge_agreement"] = agreement
    out["by_task"] = reference_by_task(local, **boot)
    return out


def eval_report(*, judgments: list[dict], pairwise: list[dict], baseline_judgments: list[dict], usages: dict,
                test: list[dict], judge_params, reference: list[dict] | None = None) -> dict:
    """metrics/eval.json: the primary judge's figures at the top level (what report, loop and the gate read),
    then per judge, across the panel, against the service baseline, pairwise, per task and per category, and
    (`reference`: rows of the `reference` table, local and service answers) the reference metrics."""
    jp = judge_params
    zetas, boot = jp.zetas, dict(resamples=jp.bootstrap, seed=jp.seed)
    panel = jp.panel
    primary = panel[0]
    category_of = {r["id"]: r.get("category") for r in test}
    local = select(judgments, answerer=LOCAL)
    services = sorted({j["answerer"] for j in baseline_judgments})

    per_judge = {}
    for name in panel:
        mine = select(local, judge=name)
        entry = summarize(mine, zetas, **boot)
        entry["repeat_sd"] = {m: repeat_spread(mine, m) for m in METRICS}
        entry["served_models"] = sorted({r["served_model"] for r in mine if r.get("served_model")})
        svc = {s: summarize(select(baseline_judgments, judge=name, answerer=s), zetas) for s in services}
        if svc:
            entry["p_match"] = p_match(entry, svc, zetas)
        pw = [r for r in pairwise if r["judge"] == name]
        if pw:
            entry["pairwise"] = pairwise_summary(pw)
        entry["usage"] = usages.get(name, {})
        per_judge[name] = entry

    top = dict(per_judge[primary])
    top.pop("usage")
    out = {"judge": primary, "judges": panel, "m": jp.m, **top, "usage": usages.get("total", {}),
           "by_task": by_task(select(local, judge=primary), zetas)}
    cats = by_category(select(local, judge=primary), category_of, zetas)
    if cats:
        out["by_category"] = cats
    if len(panel) > 1:
        out["per_judge"] = per_judge
        out["panel"] = panel_summary(local, zetas) | {
            "agreement": {m: agreement(local, m) for m in METRICS},
            "agreement_method": "per-answer V^j: Pearson and Spearman per pair of judges, Krippendorff's alpha (interval) over the panel",
        }
        if services:
            svc_panel = {s: panel_summary(select(baseline_judgments, answerer=s), zetas) for s in services}
            out["panel"]["p_match"] = p_match(out["panel"], svc_panel, zetas)
    if reference is not None:
        out["reference"] = reference_report(reference, boot=boot, primary_judgments=select(judgments, judge=primary)
                                            + select(baseline_judgments, judge=primary))
    return out


def baseline_report(*, judgments: list[dict], answers: list[dict], answer_usage: dict, judge_usage: dict,
                    judge_params) -> dict:
    """metrics/baseline.json: each service's answers as judged by each judge (the paper's Table 1 rows)."""
    jp = judge_params
    boot = dict(resamples=jp.bootstrap, seed=jp.seed)
    out = {"judges": jp.panel, "m": jp.m, "services": {}}
    for s in jp.services:
        mine = [a for a in answers if a["service"] == s]
        entry = {"answers": len(mine), "length_cutoffs": sum(a["finish_reason"] == "length" for a in mine),
                 "refusals": sum(a["finish_reason"] == "refusal" for a in mine),
                 "by_judge": {name: summarize(select(judgments, judge=name, answerer=s), jp.zetas, **boot)
                              for name in jp.panel}}
        if len(jp.panel) > 1:
            entry["panel"] = panel_summary(select(judgments, answerer=s), jp.zetas)
        out["services"][s] = entry
    out["usage"] = {"answers": answer_usage, "judging": judge_usage}
    return out
