"""The gate's error over whole loops, simulated: how often a loop passes a model that is exactly at the bar (a false
pass, in any of its cycles), and how often it passes one 5 points better (a true pass), for each gate mode.

Each simulated loop draws one test set of `--prompts` prompts (by default as many as the shipped params.yaml's split
of the coverage data gives the gate: llamaduo.coverage.prepare) and runs `--cycles` gate tests on it, one per cycle,
each with the mode's rule as llamaduo.reporting.gate applies it (the one-sided bound of llamaduo.intervals,
the lower of Student's t and Hall's skewness-corrected t, at the cycle's share of gate.alpha, or the mean for `point`;
Student's t alone is reported beside it on the same loops). A prompt's score is its difficulty (shared by every
cycle of the loop: the test set is the same) plus the cycle's noise (a new model, new answers, new judgments); the
share of the variance that is the prompt's is `--rho`. Noise is normal, and in two more runs skewed (a centred
exponential, its long tail down or up: judge scores pile up at one end), since the t bound assumes normal means; a
long lower tail is the hard case for a lower bound (a high mean comes with a small spread).

The spread is measured, per test prompt (the gate's unit), from a cycle's per-answer tables when given
(`--reference`, `--judgments`, `--baseline-judgments`: data/eval/*.parquet after `dvc repro`); otherwise from the
committed metrics/eval.json, whose bootstrap intervals over answers give a per-answer spread (an upper bound on the
per-prompt one: a prompt's mean of k answers spreads less), and local and service taken as independent (which
makes the paired spread larger than it is: both answer the same prompt). Writes bench/results/gate.json with
hardware.describe().

    python bench/gate.py                                  # spread from metrics/eval.json
    python bench/gate.py --reference data/eval/reference.parquet --judgments data/eval/judgments.parquet \\
        --baseline-judgments data/eval/baseline_judgments.parquet
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llamaduo import hardware, intervals, tables  # noqa: E402
from llamaduo.atomic import write_json  # noqa: E402
from llamaduo.config import DataParams, GateParams, LoopParams  # noqa: E402
from llamaduo.intervals import cycle_alpha  # noqa: E402
from llamaduo.reporting.summary import prompt_scores  # noqa: E402


def spread_from_tables(reference: str, judgments: str | None, baseline_judgments: str | None) -> dict:
    """Per-prompt sd of the local model's scores and of the paired difference local - service, per metric."""
    ref = tables.read(reference, "reference")
    jud = tables.read(judgments, "judgments") if judgments else []
    base = tables.read(baseline_judgments, "judgments") if baseline_judgments else []
    out = {}
    for metric in ("rouge_l", "precision"):
        if metric == "precision" and not jud:
            continue
        local, services = prompt_scores(metric, judgments=jud, baseline_judgments=base, reference=ref)
        entry = {"prompts": len(local), "local_mean": round(float(np.mean(list(local.values()))), 3),
                 "local_sd": round(intervals.spread(list(local.values())), 3)}
        if services:
            name = sorted(services)[0]
            d = intervals.paired(local, services[name])
            entry |= {"service": name, "paired_mean": round(float(np.mean(d)), 3), "paired_sd": round(intervals.spread(d), 3)}
        out[metric] = entry
    return {"source": f"per-prompt scores of {reference}" + (f", {judgments}, {baseline_judgments}" if jud else ""),
            "metrics": out}


def spread_from_eval(path: Path) -> dict:
    """From eval.json's bootstrap 95% intervals of the mean over answers: sd = width / (2 * 1.96) * sqrt(answers)."""
    ev = json.loads(path.read_text())
    out = {}
    for metric, local, service in (
            ("rouge_l", ev["reference"]["rouge_l"], ev["reference"]["services"]["service"]["rouge_l"]),
            ("precision", ev["precision"], None)):
        def sd(f):
            return (f["ci95_high"] - f["ci95_low"]) / (2 * 1.96) * math.sqrt(f["scored_answers"])

        entry = {"local_mean": local["mean"], "local_sd": round(sd(local), 3)}
        if service:
            entry |= {"paired_sd": round(math.hypot(sd(local), sd(service)), 3)}
        out[metric] = entry
    # the service's precision answers are judged in baseline.json, not here: its sd taken as the local one's
    out["precision"]["paired_sd"] = round(math.sqrt(2) * out["precision"]["local_sd"], 3)
    return {"source": f"{path.relative_to(ROOT)} bootstrap intervals over answers (an upper bound: per answer, not per "
                      "prompt; local and service independent)", "metrics": out}


def split_prompts(data: DataParams) -> int:
    """The test prompts the split of `data` (params.yaml's) gives the gate, over every task: what a cycle tests on."""
    from llamaduo.coverage.prepare import prepare

    _, test = prepare(coverage_dir=str(ROOT / data.coverage_dir), tasks=data.tasks, train_ratio=data.train_ratio,
                      seed=data.seed, max_rows_per_task=data.max_rows_per_task)
    return len(test)


def draw_noise(scale: float, size: tuple, noise: str, answers: int, rng: np.random.Generator) -> np.ndarray:
    """Per-prompt noise of sd `scale`: normal, or the mean of a prompt's `answers` scores, each a centred exponential
    (a long upper tail for skewed_right, a long lower one for skewed_left; skewness 2 / sqrt(answers))."""
    if noise == "normal":
        return rng.normal(0.0, scale, size=size)
    one = scale * math.sqrt(answers)
    e = (rng.exponential(one, size=(*size, answers)) - one).mean(axis=-1)
    return e if noise == "skewed_right" else -e


def simulate(*, mode: str, sd: float, bar: float, true: float, prompts: int, cycles: int, loops: int, alpha: float,
             spend: bool, rho: float, noise: str, answers: int, rng: np.random.Generator) -> dict:
    """The share of loops that pass in some cycle, and the share passing at each cycle (first pass)."""

    difficulty = rng.normal(0.0, sd * math.sqrt(rho), size=(loops, 1, prompts))
    x = true + difficulty + draw_noise(sd * math.sqrt(1 - rho), (loops, cycles, prompts), noise, answers, rng)
    mean = x.mean(axis=2)
    if mode == "point":
        passed = passed_t = passed_hall = mean >= bar
    else:
        spent, shares = 0.0, []
        for c in range(cycles):
            shares.append(cycle_alpha(alpha, spent, c, cycles) if spend else alpha)
            spent += shares[-1]
        # the gate's bound (llamaduo.intervals: the lower of the two), and each alone on the same draws for comparison
        t_bound, hall_bound = (np.stack(b, axis=1) for b in zip(*(intervals.t_and_hall_bounds(x[:, c], shares[c])
                                                                   for c in range(cycles))))
        passed = np.minimum(t_bound, hall_bound) > bar
        passed_t, passed_hall = t_bound > bar, hall_bound > bar
    anywhere, anywhere_t, anywhere_hall = passed.any(axis=1), passed_t.any(axis=1), passed_hall.any(axis=1)
    first = np.where(anywhere, passed.argmax(axis=1), -1)
    return {"pass_rate": round(float(anywhere.mean()), 4),
            "pass_rate_t_bound": round(float(anywhere_t.mean()), 4),
            "pass_rate_hall_bound": round(float(anywhere_hall.mean()), 4),
            "first_pass_by_cycle": [round(float((first == c).mean()), 4) for c in range(cycles)],
            "se": round(float(math.sqrt(anywhere.mean() * (1 - anywhere.mean()) / loops)), 4)}


def simulate_sequential(*, sd: float, bar: float, true: float, prompts: int, rounds: int, loops: int, alpha: float,
                        noise: str, answers: int, rng: np.random.Generator) -> dict:
    """One cycle's gate on a judge metric, judged in `rounds` rounds with llamaduo.judging.sequential's futility stop
    (the predicted chance of a pass once every prompt is judged, llamaduo.intervals.pass_chance, below alpha) against
    a full pass: how often the decisions differ (a stop where the full set passes: the stop never passes a model) and
    the share of judgments saved."""
    from llamaduo.judging.sequential import rounds_of

    x = true + draw_noise(sd, (loops, prompts), noise, answers, rng)
    ends = np.cumsum([len(r) for r in rounds_of(list(range(prompts)), rounds)])
    stopped_at = np.full(loops, prompts)
    for end in ends[:-1]:  # after each round but the last
        chance = intervals.pass_chance(x[:, :end], prompts, bar, alpha)
        stopped_at = np.where((stopped_at == prompts) & (chance < alpha), end, stopped_at)
    full_pass = intervals.lower_bounds(x, alpha) > bar
    stopped = stopped_at < prompts
    return {"true": true, "noise": noise, "full_pass_rate": round(float(full_pass.mean()), 4),
            "stop_rate": round(float(stopped.mean()), 4), "decision_differs": round(float((stopped & full_pass).mean()), 4),
            "judgments_saved": round(float(1 - stopped_at.mean() / prompts), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference"), ap.add_argument("--judgments"), ap.add_argument("--baseline-judgments")
    ap.add_argument("--loops", type=int, default=20_000)
    ap.add_argument("--prompts", type=int, default=None,
                    help="test prompts (default: what params.yaml's `data` split of the coverage data gives)")
    ap.add_argument("--cycles", type=int, default=None, help="default: params.yaml's loop.max_cycles")
    ap.add_argument("--answers", type=int, default=None, help="answers averaged per prompt (default: params.yaml's infer.k)")
    ap.add_argument("--rho", type=float, default=0.5, help="share of a prompt's variance that is the prompt's own")
    ap.add_argument("--better", type=float, default=5.0, help="points above the bar for the true-pass rate")
    ap.add_argument("--clear", type=float, default=20.0,
                    help="points above the bar for a model the gate should pass (sequential judging's cost in passes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench/results/gate.json"))
    args = ap.parse_args()
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    gate, loop = GateParams(**params["gate"]), LoopParams(**params["loop"])
    cycles = args.cycles or loop.max_cycles
    data = DataParams(**params["data"])
    if args.prompts is None:
        args.prompts = split_prompts(data)
        prompts_from = (f"the split of {data.coverage_dir} by params.yaml (`data.train_ratio` {data.train_ratio:g}, "
                        f"`data.seed` {data.seed}, tasks {', '.join(data.tasks)})")
    else:
        prompts_from = "--prompts"
    answers = args.answers or params["infer"]["k"]
    spread = (spread_from_tables(args.reference, args.judgments, args.baseline_judgments) if args.reference
              else spread_from_eval(ROOT / "metrics/eval.json"))
    m = spread["metrics"]
    # (mode, metric, sd the test sees, the bar on that scale)
    cases = [("non_inferiority", "rouge_l", m["rouge_l"]["paired_sd"], -gate.margin),
             ("threshold", "rouge_l", m["rouge_l"]["local_sd"], 20.0),
             ("point", "rouge_l", m["rouge_l"]["local_sd"], 20.0)]
    if "precision" in m:
        cases += [("non_inferiority", "precision", m["precision"]["paired_sd"], -gate.margin),
                  ("threshold", "precision", m["precision"]["local_sd"], float(gate.threshold)),
                  ("point", "precision", m["precision"]["local_sd"], float(gate.threshold))]
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    results = []
    for mode, metric, sd, bar in cases:
        for noise in ("normal", "skewed_left", "skewed_right"):
            policies = (("spent", True), ("every_cycle_at_alpha", False)) if mode != "point" else (("point", False),)
            for policy, spend in policies:
                common = dict(mode=mode, sd=sd, bar=bar, prompts=args.prompts, cycles=cycles, loops=args.loops,
                              alpha=gate.alpha, spend=spend, rho=args.rho, noise=noise, answers=answers, rng=rng)
                at_bar = simulate(true=bar, **common)
                better = simulate(true=bar + args.better, **common)
                share = cycle_alpha(gate.alpha, 0, 0, cycles) if spend else gate.alpha
                row = {"mode": mode, "metric": metric, "noise": noise, "alpha_policy": policy, "sd_per_prompt": sd,
                       "bar": bar, "false_pass_at_boundary": at_bar["pass_rate"], "false_pass_se": at_bar["se"],
                       "false_pass_first_by_cycle": at_bar["first_pass_by_cycle"],
                       f"true_pass_{args.better:g}_better": better["pass_rate"],
                       # Student's t bound alone, on the same simulated loops: the bound the gate used before
                       "false_pass_at_boundary_t_bound": at_bar["pass_rate_t_bound"],
                       # Hall's bound alone: the other half of the gate's bound
                       "false_pass_at_boundary_hall_bound": at_bar["pass_rate_hall_bound"],
                       f"true_pass_{args.better:g}_better_t_bound": better["pass_rate_t_bound"],
                       "true_pass_first_by_cycle": better["first_pass_by_cycle"]}
                if mode != "point":
                    row["detectable_80pct_power"] = round(intervals.detectable(sd, args.prompts, share), 3)
                    row[f"prompts_for_80pct_power_at_{args.better:g}"] = intervals.prompts_needed(sd, args.better, share)
                results.append(row)
                print(f"{mode:16s} {metric:9s} {noise:12s} {policy:20s} sd {sd:6.2f}  false pass {at_bar['pass_rate']:.4f}"
                      f" (t {at_bar['pass_rate_t_bound']:.4f})  true pass (+{args.better:g}) {better['pass_rate']:.4f}"
                      f" (t {better['pass_rate_t_bound']:.4f})")
    # sequential judging, on the judge metric (precision): the threshold mode at the offline default's measured mean
    # (far below the bar), at the bar, 5 points above it and `--clear` points above it; non-inferiority at -margin - 10,
    # at -margin, and 5 and `--clear` points above -margin
    seq = []
    share = cycle_alpha(gate.alpha, 0, 0, cycles)
    if "precision" in m:
        p = m["precision"]
        for mode, sd, bar, trues in (("threshold", p["local_sd"], float(gate.threshold),
                                      [p["local_mean"], gate.threshold, gate.threshold + args.better, gate.threshold + args.clear]),
                                     ("non_inferiority", p["paired_sd"], -gate.margin,
                                      [-gate.margin - 10, -gate.margin, -gate.margin + args.better, -gate.margin + args.clear])):
            for true in trues:
                for noise in ("normal", "skewed_left", "skewed_right"):
                    row = {"mode": mode, "metric": "precision", "sd_per_prompt": sd, "bar": bar,
                           "rounds": params["judge"]["rounds"],
                           **simulate_sequential(sd=sd, bar=bar, true=float(true), prompts=args.prompts,
                                                 rounds=params["judge"]["rounds"], loops=args.loops, alpha=share,
                                                 noise=noise, answers=answers, rng=rng)}
                    seq.append(row)
                    print(f"sequential {mode:16s} true {true:7.2f} bar {bar:6.1f} {noise:12s}: saved {row['judgments_saved']:.3f}, "
                          f"differs {row['decision_differs']:.4f} (full pass {row['full_pass_rate']:.3f})")
    shipped = [r for r in results if r["alpha_policy"] == "spent"]
    out = {"what": "share of whole simulated loops that pass the gate in some cycle: at the boundary (true score at the "
                   "bar, or at -margin) a false pass; 5 points better a true pass",
           "loops_per_case": args.loops, "prompts": args.prompts, "prompts_from": prompts_from, "cycles": cycles, "alpha": gate.alpha,
           "alpha_per_cycle": cycle_alpha(gate.alpha, 0, 0, cycles), "margin": gate.margin, "rho": args.rho,
           "answers_per_prompt": answers, "skewness_of_skewed_noise": round(2 / math.sqrt(answers), 3),
           "seed": args.seed, "spread": spread, "cases": results, "sequential": seq,
           "sequential_max_decision_differs": max((r["decision_differs"] for r in seq), default=None),
           "false_pass_spent_by_noise": {n: max(r["false_pass_at_boundary"] for r in shipped if r["noise"] == n)
                                         for n in ("normal", "skewed_left", "skewed_right")},
           "max_false_pass_shipped_policy": max(r["false_pass_at_boundary"] for r in shipped),
           "false_pass_spent_by_noise_t_bound": {n: max(r["false_pass_at_boundary_t_bound"] for r in shipped
                                                       if r["noise"] == n and r["mode"] != "point")
                                                 for n in ("normal", "skewed_left", "skewed_right")},
           "false_pass_spent_by_noise_hall_bound": {n: max(r["false_pass_at_boundary_hall_bound"] for r in shipped
                                                          if r["noise"] == n and r["mode"] != "point")
                                                    for n in ("normal", "skewed_left", "skewed_right")},
           "bound": "the lower of Student's t and Hall's skewness-corrected t bound (llamaduo.intervals)",
           "machine": hardware.describe(), "load_average_1m": round(os.getloadavg()[0], 2),
           "wall_s": round(time.perf_counter() - start, 1)}
    write_json(args.out, out)
    print(f"max false-pass rate (alpha spent across cycles): {out['max_false_pass_shipped_policy']}; wrote {args.out}")


if __name__ == "__main__":
    main()
