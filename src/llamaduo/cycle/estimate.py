"""The pre-flight estimate: what each coming cycle of the loop will pay (service calls, tokens, USD at the providers'
prices) and how long it will take, from what the last cycle measured and what the call cache already holds.

- synthesize: the requests a cycle's volume needs at the curated yield per request the last synthesis measured
  (metrics/synthesize.json), less the requests already answered and cached (`requests_sent`: a cycle asks ahead,
  and a larger volume asks the same first requests again), at the tokens per request it measured;
- judge: every judge call of the last cycle again (the local model's answers are new each cycle, so none is in the
  cache), at the tokens per call it measured (metrics/eval.json);
- baseline: nothing once metrics/baseline.json exists (the test prompts and the services do not change between
  cycles: a rerun is answered by the cache);
- wall time: the last cycle's (metrics/history.json), its training part (metrics/train.json) scaled by the optimizer
  steps the new row count gives.

- the gate's power: the test prompts the split gives (`data.*` as params.yaml holds them now; synthetic rows go to
  train only, so every cycle tests the same prompts), the smallest difference the gate detects at 80% power at the
  cycle's share of `gate.alpha`, and the test prompts the margin (or the distance to the threshold) would need, at
  the spread the last eval measured for the same metric and mode (metrics/summary.json); before one, the spread is
  unknown and so is the power.

Tokens come from every answer, paid or from the cache (`Usage.answered_*`), so an estimate made after a rerun from
the cache is the one made after the run that paid. A figure nothing has measured yet (before cycle 0, or before the
first synthesis) is None, and the estimate says what is missing.

`llamaduo plan` and `llamaduo loop --dry-run` print it; the loop prints each cycle's before running it and records it
in metrics/estimate.json, so `llamaduo status` and the report show it beside what the cycle paid.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from llamaduo import paths


def _read(path: Path, default):
    return json.loads(path.read_text()) if path.is_file() else default


def _per_call(usage: dict) -> tuple[int, float, float] | None:
    """(calls asked, input, output tokens per call) of a stage's usage, from every answer (paid or cached) where the
    usage counts them, else from the paid ones; None when no call was answered."""
    asked = (usage.get("calls") or 0) + (usage.get("cached") or 0)
    if "answered_input_tokens" in usage and asked:
        return asked, usage["answered_input_tokens"] / asked, usage["answered_output_tokens"] / asked
    if usage.get("calls"):
        return asked, usage.get("input_tokens", 0) / usage["calls"], usage.get("output_tokens", 0) / usage["calls"]
    return None


def _usd(provider, calls: int, tokens_in: float, tokens_out: float) -> float:
    """What `calls` calls of these tokens cost at `provider`'s price (`providers.<name>`), the Batch API's discount
    included when it answers them."""
    price = provider.price
    factor = price.batch_factor if provider.batch else 1.0
    return factor * calls * (tokens_in * price.input_per_mtok + tokens_out * price.output_per_mtok) / 1e6


def _stage(calls: int | None, per_call: tuple[float, float] | None, provider, basis: str) -> dict:
    if calls is None:
        return {"calls": None, "input_tokens": None, "output_tokens": None, "usd": None, "basis": basis}
    if not calls:
        return {"calls": 0, "input_tokens": 0, "output_tokens": 0, "usd": 0.0, "basis": basis}
    if per_call is None:
        return {"calls": calls, "input_tokens": None, "output_tokens": None, "usd": None, "basis": basis}
    tin, tout = per_call
    return {"calls": calls, "input_tokens": round(calls * tin), "output_tokens": round(calls * tout),
            "usd": _usd(provider, calls, tin, tout), "basis": basis}


class Measured:
    """What the last cycle measured, read once from the metrics folder."""

    def __init__(self, metrics_dir: Path):
        m = Path(metrics_dir)
        self.synth = _read(m / "synthesize.json", {})
        self.eval = _read(m / "eval.json", {})
        self.baseline = _read(m / "baseline.json", None)
        self.train = _read(m / "train.json", {})
        self.prepare = _read(m / "prepare.json", {})
        self.history = sorted(_read(m / "history.json", []), key=lambda h: h.get("cycle", 0))
        self.gate = (_read(m / "summary.json", {}) or {}).get("gate") or {}

    def coverage_rows(self) -> int | None:
        rows = [t.get("train", 0) for t in self.prepare.values() if isinstance(t, dict)]
        return sum(rows) if rows else None


def _synthesis(params, volume: int, m: Measured) -> dict:
    s = params.synth
    provider = params.providers[s.provider]
    if volume == 0:
        return _stage(0, None, provider, "volume 0: no synthesis")
    done = m.synth.get("requests") or 0
    cached = m.synth.get("requests_sent") or 0
    if done and m.synth.get("curated"):
        per_request = m.synth["curated"] / done
        basis = f"{per_request:.2f} curated pairs per request and {cached} requests cached (metrics/synthesize.json)"
    else:  # nothing synthesized yet: every pair asked for kept, the fewest requests the volume can take
        per_request = s.pairs_per_request
        basis = f"no synthesis measured yet: at least {s.pairs_per_request} pairs per request (`synth.pairs_per_request`)"
    needed = min(math.ceil(volume / per_request), s.max_requests)
    measured = _per_call(m.synth.get("usage") or {})
    return _stage(max(needed - cached, 0), measured[1:] if measured else None, provider, basis)


def _judging(params, m: Measured) -> dict:
    j = params.judge
    if not m.eval:
        return _stage(None, None, params.providers[j.provider], "no judging measured yet (cycle 0 measures it)")
    per_judge = {n: e.get("usage") or {} for n, e in (m.eval.get("per_judge") or {}).items()} or {
        m.eval.get("judge", j.provider): m.eval.get("usage") or {}}
    calls, tin, tout, usd = 0, 0.0, 0.0, 0.0
    for name, usage in per_judge.items():
        measured = _per_call(usage)
        if measured is None or name not in params.providers:
            continue
        n, a, b = measured
        calls, tin, tout = calls + n, tin + n * a, tout + n * b
        usd += _usd(params.providers[name], n, a, b)
    return {"calls": calls, "input_tokens": round(tin), "output_tokens": round(tout), "usd": usd,
            "basis": "every judge call of the last cycle, new answers each cycle (metrics/eval.json)"}


def _baseline(params, m: Measured) -> dict:
    provider = params.providers[params.judge.provider]
    if m.baseline is not None:
        return _stage(0, None, provider, "answered by the call cache (metrics/baseline.json exists)")
    return _stage(None, None, provider, "no baseline measured yet (cycle 0 pays for it once)")


def _wall_s(params, volume: int, m: Measured) -> tuple[float | None, str]:
    from llamaduo.training.budget import total_steps
    from llamaduo.training.data import holdout_size

    if not m.history or not m.history[-1].get("wall_s"):
        return None, "no cycle measured yet"
    last = m.history[-1]["wall_s"]
    coverage, steps, train_s = m.coverage_rows(), m.train.get("steps"), m.train.get("wall_s")
    if coverage is None or not steps or not train_s:
        return last, "the last cycle's wall time"
    rows = coverage - holdout_size(coverage, params.train) + volume
    scaled = train_s * total_steps(params.train, rows) / steps
    return last - train_s + scaled, (f"the last cycle's wall time, its training ({train_s:.0f} s for {steps} steps) "
                                     f"scaled to {total_steps(params.train, rows)} steps for {rows} rows")


def test_prompts(params) -> tuple[int | None, str]:
    """(test prompts, where the count comes from): the split `data.*` gives now, over every task in `data.tasks`;
    None with the reason when the coverage files cannot be read."""
    from llamaduo.coverage.prepare import prepare
    from llamaduo.errors import CoverageError

    d = params.data
    try:
        _, test = prepare(coverage_dir=d.coverage_dir, tasks=d.tasks, train_ratio=d.train_ratio, seed=d.seed,
                          max_rows_per_task=d.max_rows_per_task)
    except CoverageError as e:
        return None, f"the split cannot be read: {e}"
    return len(test), f"the split of {d.coverage_dir} (`data.train_ratio` {d.train_ratio:g}, `data.seed` {d.seed})"


def spread(params, m: Measured) -> tuple[float | None, float | None, str]:
    """(spread, estimate, where they come from) of what the gate tests: the per-prompt scores (threshold) or the
    paired differences against the best service (non_inferiority) as the last eval measured them; (None, None, why)
    before an eval of the same metric and mode (another metric or mode spreads differently)."""
    g = params.gate
    test = m.gate.get("test") or {}
    if not m.gate:
        return None, None, "no eval measured yet: cycle 0 measures it"
    if (m.gate.get("metric"), test.get("mode")) != (g.metric, g.mode) or test.get("sd") is None:
        last = f"{m.gate.get('metric')} {test.get('mode') or 'point'}"
        return None, None, f"the last eval tested {last}, not {g.metric} {g.mode}"
    what = "paired differences local - service" if g.mode == "non_inferiority" else "per-prompt scores"
    return test["sd"], test.get("estimate"), f"the last eval's {what} over {test.get('prompts')} prompts (metrics/summary.json)"


def _power(params, prompts: int | None, sd: float | None, last_estimate: float | None, alpha: float | None) -> dict:
    """The gate's power in one cycle tested at `alpha`: the smallest difference it detects at 80% power and the test
    prompts the difference it asks about (`reporting.gate.power_target`) needs; None where the spread or the prompt
    count is unknown, and all None without a level (`alpha` None: the point rule bounds nothing)."""
    from llamaduo.reporting.gate import power

    if alpha is None:
        return {"alpha": None, "target": None, "target_is": None, "detectable": None, "prompts_needed": None,
                "underpowered": None}
    return {"alpha": alpha} | power(params.gate, sd, prompts, last_estimate, alpha)


def cycle_estimate(params, cycle: int, volume: int, m: Measured, *, power: dict | None = None) -> dict:
    """The estimate of one coming cycle at its synthetic `volume` (calls, tokens and USD per stage and in all, wall time;
    `power`: the gate's, as `plan` works it out)."""
    stages = {"synthesize": _synthesis(params, volume, m), "baseline": _baseline(params, m), "judge": _judging(params, m)}
    known = all(st["usd"] is not None for st in stages.values())
    wall, wall_basis = _wall_s(params, volume, m)
    return {"cycle": cycle, "volume": volume, "stages": stages,
            "calls": sum(st["calls"] or 0 for st in stages.values()),
            "tokens": sum((st["input_tokens"] or 0) + (st["output_tokens"] or 0) for st in stages.values()),
            "usd": sum(st["usd"] or 0.0 for st in stages.values()), "complete": known,
            "wall_s": round(wall, 1) if wall is not None else None, "wall_basis": wall_basis,
            **({"power": power} if power is not None else {})}


def plan(params, volumes: dict[int, int], *, spent_usd: float = 0.0, alpha_spent: float = 0.0,
         metrics_dir: str | Path = paths.METRICS_DIR) -> dict:
    """The estimate of the coming cycles (`volumes`: cycle -> its synthetic volume, in order), each from the last cycle
    measured, with what would have been spent by its end against `loop.max_cost_usd` (`spent_usd`: paid so far in
    this loop) and the gate's power at the cycle's share of `gate.alpha` (`alpha_spent`: what this loop's cycles
    spent so far; each coming cycle spends its share, as the loop gives it)."""
    from llamaduo import intervals

    m = Measured(Path(metrics_dir))
    g = params.gate
    prompts, prompts_from = test_prompts(params)
    sd, last_estimate, sd_from = spread(params, m)
    gate = {"metric": g.metric, "mode": g.mode, "prompts": prompts, "prompts_from": prompts_from, "sd": sd,
            "sd_from": sd_from, "power": intervals.POWER}
    cycles, total, spent_alpha = [], spent_usd, alpha_spent
    for c, volume in volumes.items():
        share = None  # the point rule bounds nothing: no level, no power
        if g.mode != "point":
            share = intervals.cycle_alpha(g.alpha, spent_alpha, c, params.loop.max_cycles)
            spent_alpha += share
        power = gate | _power(params, prompts, sd, last_estimate, share)
        est = cycle_estimate(params, c, volume, m, power=power)
        total += est["usd"]
        est["spent_by_end_usd"] = total
        cap = params.loop.max_cost_usd
        est["within_budget"] = None if cap is None else total <= cap
        cycles.append(est)
    if m.history:
        source = f"measured in cycle {m.history[-1]['cycle']}"
    elif m.eval or m.synth:
        source = f"measured by the last `dvc repro` in {metrics_dir}/, no loop cycle recorded yet"
    else:
        source = "nothing measured yet: cycle 0 measures what the later cycles pay"
    return {"measured_from": source, "spent_usd": spent_usd,
            "max_cost_usd": params.loop.max_cost_usd, "cycles": cycles}


def _fmt(x, spec: str, unknown: str = "?") -> str:
    return unknown if x is None else format(x, spec)


def power_text(power: dict) -> str:
    """The gate's power in one cycle, in words: the test prompts, the difference they detect, the prompts the margin
    (or the distance to the threshold) needs; what is not known yet, and why."""
    n, what = power["prompts"], f"{power['metric']} {power['mode']}"
    if n is None:
        return f"gate ({what}): test prompts unknown ({power['prompts_from']})"
    if power["mode"] == "point":
        return f"gate ({what}): {n} test prompts; the point rule bounds nothing, so it has no power to state"
    if power["sd"] is None:
        return (f"gate ({what}): {n} test prompts; the difference they detect is unknown until an eval measures the "
                f"spread ({power['sd_from']})")
    if power["detectable"] is None:
        return f"gate ({what}): {n} test prompt(s), too few for an interval"
    need = (f"{power['prompts_needed']} test prompts" if power["prompts_needed"] is not None
            else "more test prompts than any sensible test set")
    short = " (more than the test set detects)" if power["underpowered"] else ""
    return (f"gate ({what}): {n} test prompts detect {power['detectable']:.2f} points at {power['power']:.0%} power "
            f"(alpha {power['alpha']:.4g}, spread {power['sd']:.2f}); {power['target_is']} {power['target']:g}{short} "
            f"needs {need}")


def describe(est: dict) -> str:
    """One cycle's estimate in one line, with what is unmeasured named."""
    parts = [f"cycle {est['cycle']} (volume {est['volume']}): {est['calls']} paid calls"]
    missing = [n for n, st in est["stages"].items() if st["usd"] is None]
    parts.append(f"{est['tokens']} tokens, ${est['usd']:.4f}" + (f" + {', '.join(missing)} not measured yet" if missing else ""))
    parts.append(f"about {_fmt(est['wall_s'], '.0f')} s")
    if est.get("within_budget") is False:
        parts.append("over `loop.max_cost_usd` by its end: the budget stops it")
    text = ", ".join(parts)
    return text + (f"; {power_text(est['power'])}" if est.get("power") else "")


def table(p: dict) -> str:
    """The whole plan as text: a line per cycle and stage, with the basis of each figure."""
    lines = [f"pre-flight estimate ({p['measured_from']}); spent so far in this loop: ${p['spent_usd']:.4f}"
             + (f" of `loop.max_cost_usd` ${p['max_cost_usd']:g}" if p["max_cost_usd"] is not None else "")]
    lines.append(f"  {'cycle':>5} {'volume':>8} {'paid calls':>10} {'tokens':>10} {'USD':>10} {'wall s':>8} {'spent by end':>13}"
                 f" {'detects':>8}")
    for est in p["cycles"]:
        more = "" if est["complete"] else "+?"  # a stage not measured yet adds to these
        usd, tokens = f"{est['usd']:.4f}{more}", f"{est['tokens']}{more}"
        detects = _fmt((est.get("power") or {}).get("detectable"), ".2f", "-" if (est.get("power") or {}).get("mode") == "point" else "?")
        flag = "  <- over the budget" if est["within_budget"] is False else ""
        lines.append(f"  {est['cycle']:>5} {est['volume']:>8} {est['calls']:>10} {tokens:>10} {usd:>10} "
                     f"{_fmt(est['wall_s'], '.0f'):>8} {'$' + format(est['spent_by_end_usd'], '.4f'):>13} {detects:>8}{flag}")
    if p["cycles"]:
        first = p["cycles"][0]
        for name, st in first["stages"].items():
            lines.append(f"  cycle {first['cycle']} {name}: {_fmt(st['calls'], 'd')} calls, "
                         f"${_fmt(st['usd'], '.4f')} ({st['basis']})")
        lines.append(f"  cycle {first['cycle']} wall time: {first['wall_basis']}")
        if first.get("power"):
            pw = first["power"]
            lines.append(f"  cycle {first['cycle']} {power_text(pw)}")
            sources = [f"test prompts: {pw['prompts_from']}"] if pw["prompts"] is not None else []
            sources += [f"spread: {pw['sd_from']}"] if pw["sd"] is not None else []
            lines.append(f"  (`detects`: the smallest difference the gate detects at {pw['power']:.0%} power at the cycle's "
                         f"share of `gate.alpha`{''.join('; ' + x for x in sources)})")
    return "\n".join(lines)


def record(est: dict, path: str | Path = paths.ESTIMATE) -> dict:
    """Keep a cycle's estimate as made before it first ran (a resumed cycle keeps its first one) in metrics/estimate.json;
    returns the estimate on record."""
    from llamaduo.atomic import write_json

    done = _read(Path(path), {})
    key = str(est["cycle"])
    if key not in done:
        done[key] = est
        write_json(path, done)
    return done[key]


def recorded(cycle: int, path: str | Path = paths.ESTIMATE) -> dict | None:
    return _read(Path(path), {}).get(str(cycle))


def spent_in_loop(params, state: dict | None) -> float:
    """What the loop under way (or stopped by its budget, which the next loop resumes) paid so far: the call cache's
    record since it started; 0 without a loop or a cache."""
    from llamaduo.budget import under_way
    from llamaduo.providers.cache import CallCache

    if not under_way(state) or not Path(params.cache.path).is_file():  # opening a missing cache creates it
        return 0.0
    cache = CallCache(params.cache.path)
    try:
        return cache.paid(since=state.get("started_at"))["cost_usd"]
    finally:
        cache.close()


def loop_plan(params, volume_for, alpha_spent) -> dict:
    """The plan of the loop `llamaduo loop` would run now: from the cycle it would resume at (or 0 for a new loop) to
    `loop.max_cycles - 1`; `volume_for(cycle, params.loop)` gives each cycle's synthetic volume, `alpha_spent(state)`
    the gate's error a loop's state records as spent. A loop stopped by its budget is resumed, not started again."""
    from llamaduo.budget import under_way

    state = _read(paths.LOOP_STATE, None)
    live = state if under_way(state) else None
    start = live.get("cycle", 0) if live else 0
    volumes = {c: volume_for(c, params.loop) for c in range(start, params.loop.max_cycles)}
    return plan(params, volumes, spent_usd=spent_in_loop(params, live), alpha_spent=alpha_spent(live) if live else 0.0)
