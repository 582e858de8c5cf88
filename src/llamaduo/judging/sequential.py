"""Sequential judging: the test prompts judged in a seeded random order, in `judge.rounds` rounds, stopping once the
gate cannot pass.

Only a stop for futility: after a round, when the one-sided upper bound of the gate's estimate (the local mean, or
the paired difference against the best service), at level `alpha / rounds`, is below the bar, no later judgment
can make the gate pass at its own level, and the remaining prompts are not judged. A stop never passes a model, so
the loop's chance of a false pass stays what the gate's own level gives it; what a stop can cost is a pass
the full set would have given (its rate is bench/gate.py's `sequential` figures). The gate reads the judged
prompts only, as the report stage does. Applies when the gate reads a judge metric; a reference metric needs no
judge, so every prompt is judged then (its figures are in eval.json all the same).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from llamaduo.intervals import paired, per_prompt, upper_bound
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


def futile(local: dict[str, float], services: dict[str, dict[str, float]], gate, alpha: float) -> bool:
    """True when the gate cannot pass: the one-sided (1 - alpha) upper bound of its estimate is at or below the bar
    (non_inferiority: the paired difference against each service, all below -margin; else the local mean, below the
    threshold)."""
    if gate.mode == "non_inferiority":
        diffs = [paired(local, s) for s in services.values()]
        bounds = [upper_bound(d, alpha) for d in diffs if len(d) >= 2]
        return bool(bounds) and len(bounds) == len(diffs) and all(b <= -gate.margin for b in bounds)
    if gate.threshold is None:
        return False
    bound = upper_bound(list(local.values()), alpha)
    return bound is not None and bound <= gate.threshold


def judge_in_rounds(responses: list[dict], *, judge: Callable[[list[dict]], tuple[list, list, dict]], gate, rounds: int,
                    seed: int, baseline_judgments: list[dict]) -> tuple[list[dict], list[dict], list[dict], dict]:
    """Judge `responses` round by round with `judge(answers) -> (judgments, pairwise, usages)`, stopping once the
    gate cannot pass. Returns judgments, pairwise rows, the usages of every round, and eval.json's `sequential`."""
    level = gate.alpha if gate.cycle_alpha is None else gate.cycle_alpha
    active = gate.metric in METRICS and rounds > 1
    parts = rounds_of(order([r["prompt_id"] for r in responses], seed), rounds if active else 1)
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
            if futile(local, services, gate, level / len(parts)):
                stopped = f"round {done} of {len(parts)}: the gate cannot pass (upper bound below the bar at alpha {level / len(parts):.4g})"
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
