"""Sequential judging: the test prompts judged in a seeded random order, in `judge.rounds` rounds, stopping once the
gate's decision is settled.

Only a stop for futility: after a round, the chance that the gate passes once every prompt is judged is predicted
from the prompts judged so far (llamaduo.intervals.pass_chance: Bayesian predictive power, on the gate's estimate:
the local mean against the threshold, or the paired difference against each service against -margin). When it is
below the gate's level (the cycle's share of `gate.alpha`), judging the rest would change the decision with less
than that chance, and the remaining prompts are not judged. A stop never passes a model, so the loop's chance of a
false pass stays what the gate's own level gives it (the stop guards no error of that kind: its level is not split
over the rounds); what a stop can cost is a pass the full set would have given, and bench/gate.py's `sequential`
figures measure how often that happens. The gate reads the judged prompts only, as the report stage does. Applies
when the gate reads a judge metric; a reference metric needs no judge, so every prompt is judged then (its figures
are in eval.json all the same).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from llamaduo.intervals import paired, pass_chance, per_prompt
from llamaduo.judging.names import LOCAL, METRICS
from llamaduo.judging.scores import answer_scores, select


def order(prompts: list[str], seed: int) -> list[str]:
    """The prompts in a seeded random order (sorted first: the input's order must not matter)."""
    out = sorted(set(prompts))
    random.Random(seed).shuffle(out)
    return out


def rounds_of(prompts: list[str], rounds: int) -> list[list[str]]:
    """`prompts` cut into `rounds` consecutive parts of near-equal size (none empty)."""
    rounds = max(1, min(rounds, len(prompts)))
    size, extra = divmod(len(prompts), rounds)
    out, start = [], 0
    for r in range(rounds):
        end = start + size + (r < extra)
        out.append(prompts[start:end])
        start = end
    return out


def chance_to_pass(local: dict[str, float], services: dict[str, dict[str, float]], gate, alpha: float,
                   prompts: set[str]) -> float | None:
    """The predicted chance that the gate at level `alpha` passes once all `prompts` are judged, from the local
    scores so far (non_inferiority: the highest over the services, each on its paired difference against -margin;
    else the local mean against the threshold). None when it cannot be told: fewer than 2 scores (or paired
    differences against some service), no service to compare with, or no threshold."""
    if gate.mode == "non_inferiority":
        chances = []
        for service in services.values():
            d = paired(local, service)
            if len(d) < 2:
                return None
            chances.append(float(pass_chance(d, len(prompts & set(service)), -gate.margin, alpha)))
        return max(chances) if chances else None
    if gate.threshold is None or len(local) < 2:
        return None
    return float(pass_chance(list(local.values()), len(prompts), gate.threshold, alpha))


def judge_in_rounds(responses: list[dict], *, judge: Callable[[list[dict]], tuple[list, list, dict]], gate, rounds: int,
                    seed: int, baseline_judgments: list[dict]) -> tuple[list[dict], list[dict], list[dict], dict]:
    """Judge `responses` round by round with `judge(answers) -> (judgments, pairwise, usages)`, stopping once the
    gate will not pass at its level. Returns judgments, pairwise rows, the usages of every round, and eval.json's `sequential`."""
    level = gate.alpha if gate.cycle_alpha is None else gate.cycle_alpha
    active = gate.metric in METRICS and rounds > 1
    everyone = {r["prompt_id"] for r in responses}
    parts = rounds_of(order(list(everyone), seed), rounds if active else 1)
    services = {s: per_prompt(answer_scores(select(baseline_judgments, primary=True, answerer=s), gate.metric))
                for s in sorted({j["answerer"] for j in baseline_judgments})} if active else {}
    judgments, pairwise, usages, stopped = [], [], [], None
    done = 0
    for r, part in enumerate(parts):
        todo = set(part)
        rows, prow, usage = judge([a for a in responses if a["prompt_id"] in todo])
        judgments += rows
        pairwise += prow
        usages.append(usage)
        done = r + 1
        if active and done < len(parts):
            local = per_prompt(answer_scores(select(judgments, primary=True, answerer=LOCAL), gate.metric))
            chance = chance_to_pass(local, services, gate, level, everyone)
            if chance is not None and chance < level:
                stopped = (f"round {done} of {len(parts)}: the gate will not pass (the chance that the rest of the prompts "
                           f"let it pass is {chance:.2g}, below alpha {level:.4g})")
                break
    judged = {p for part in parts[:done] for p in part}
    full = len(judgments) if judged else 0
    per_answer = full / max(1, sum(a["prompt_id"] in judged for a in responses))  # judgments per answer, all judges
    full_cost = round(per_answer * len(responses))
    return judgments, pairwise, usages, {
        "active": active, "rounds": len(parts), "rounds_run": done, "seed": seed,
        "prompts": sum(len(p) for p in parts), "prompts_judged": len(judged),
        "judgments_paid": len(judgments), "judgments_full": full_cost,
        "saving": round(1 - len(judgments) / full_cost, 4) if full_cost else 0.0, "stopped": stopped}
