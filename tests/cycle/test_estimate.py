"""The pre-flight estimate: each coming cycle's paid calls, tokens, USD and wall time from hand-made measurements of
the last cycle, the same from a rerun's cached answers as from the run that paid, recorded once per cycle and shown
beside what the cycle paid (`llamaduo status`, the HTML report)."""

import json
import sqlite3

import pytest

from llamaduo import cli, paths
from llamaduo.atomic import write_json
from llamaduo.config import Params
from llamaduo.cycle import estimate

PARAMS = {
    # $2 in and $8 out per 1M tokens
    "providers": {"svc": {"kind": "openai_compatible", "model": "m", "base_url": "http://127.0.0.1:9/v1",
                          "price": {"input_per_mtok": 2.0, "output_per_mtok": 8.0}}},
    "synth": {"provider": "svc", "pairs_per_request": 4, "max_requests": 200},
    "judge": {"provider": "svc"},
    "train": {"epochs": 1, "max_steps": None, "batch_size": 16, "val_ratio": 0},
    "loop": {"start_volume": 100, "growth_factor": 2, "max_cycles": 3, "max_cost_usd": 0.5},
}

# the last cycle (1, volume 100) used the first 20 of 25 requests sent (50 curated pairs: 2.5 a request) at 1000 + 500
# tokens each, and 120 judge calls at 2000 + 100 tokens each
SYNTH = {"requests": 20, "requests_sent": 25, "curated": 50,
         "usage": {"calls": 25, "cached": 0, "input_tokens": 25000, "output_tokens": 12500,
                   "answered_input_tokens": 25000, "answered_output_tokens": 12500}}
EVAL_PAID = {"judge": "svc", "usage": {"calls": 120, "cached": 0, "input_tokens": 240000, "output_tokens": 12000,
                                       "answered_input_tokens": 240000, "answered_output_tokens": 12000}}
# the same cycle rerun from the call cache: nothing paid, every answer's tokens counted
EVAL_CACHED = {"judge": "svc", "usage": {"calls": 0, "cached": 120, "input_tokens": 0, "output_tokens": 0,
                                         "answered_input_tokens": 240000, "answered_output_tokens": 12000}}


def measured(root, ev=EVAL_PAID):
    m = root / "metrics"
    m.mkdir(parents=True, exist_ok=True)
    for name, doc in {"synthesize": SYNTH, "eval": ev, "baseline": {"services": {}}, "prepare": {"t": {"train": 101, "test": 10}},
                      "train": {"steps": 10, "wall_s": 400.0},
                      "history": [{"cycle": 1, "volume": 100, "metric": "precision", "score": 45.0, "precision": 45.0, "ci95": [35.0, 55.0],
                                   "wall_s": 1000.0, "calls": 145, "cost_usd": 0.7}]}.items():
        (m / f"{name}.json").write_text(json.dumps(doc))
    return m


def test_each_stage_is_priced_from_what_the_last_cycle_measured(tmp_path):
    p = Params.model_validate(PARAMS)
    plan = estimate.plan(p, {2: 200}, spent_usd=0.1, metrics_dir=measured(tmp_path))
    assert plan["measured_from"] == "measured in cycle 1"
    est = plan["cycles"][0]
    syn, base, judge = est["stages"]["synthesize"], est["stages"]["baseline"], est["stages"]["judge"]
    # volume 200 at 2.5 pairs a request: 80 requests, 25 of them answered already and cached
    assert (syn["calls"], syn["input_tokens"], syn["output_tokens"]) == (55, 55000, 27500)
    assert syn["usd"] == pytest.approx(55 * (1000 * 2 + 500 * 8) / 1e6)
    assert base["calls"] == 0 and "call cache" in base["basis"]
    assert (judge["calls"], judge["input_tokens"], judge["output_tokens"]) == (120, 240000, 12000)
    assert judge["usd"] == pytest.approx(120 * (2000 * 2 + 100 * 8) / 1e6)
    assert est["calls"] == 175 and est["tokens"] == 55000 + 27500 + 240000 + 12000 and est["complete"]
    # training: 101 + 200 rows, 19 steps of 16 for one epoch against the 10 steps that took 400 s
    assert est["wall_s"] == pytest.approx(1000 - 400 + 400 * 19 / 10)
    assert est["spent_by_end_usd"] == pytest.approx(0.1 + 0.33 + 0.576) and est["within_budget"] is False
    assert "over `loop.max_cost_usd` by its end: the budget stops it" in estimate.describe(est)


def test_a_rerun_from_the_cache_gives_the_same_estimate(tmp_path):
    p = Params.model_validate(PARAMS)
    paid = estimate.plan(p, {1: 100, 2: 200}, metrics_dir=measured(tmp_path / "a", EVAL_PAID))
    cached = estimate.plan(p, {1: 100, 2: 200}, metrics_dir=measured(tmp_path / "b", EVAL_CACHED))
    strip = lambda pl: [{k: v for k, v in c.items() if k not in ("wall_basis",)} for c in pl["cycles"]]  # noqa: E731
    assert strip(paid) == strip(cached)
    assert [c["stages"]["synthesize"]["calls"] for c in paid["cycles"]] == [15, 55]  # 40 and 80 requests, 25 cached


def with_split(coverage_dir, **gate) -> Params:
    """PARAMS on the 20-row fixture task, split half and half (seed 1: 10 test prompts), gated as `gate` says."""
    data = {"coverage_dir": str(coverage_dir), "tasks": ["summarize"], "train_ratio": 0.5, "seed": 1}
    return Params.model_validate(PARAMS | {"data": data, "gate": {"metric": "rouge_l", "margin": 2.0, **gate}})


def last_eval(root, *, metric="rouge_l", mode="non_inferiority", sd=8.0, estimate_=-1.0, prompts=10):
    """metrics/summary.json as the report stage writes it: the gate's test with the spread of what it tested."""
    m = root / "metrics"
    m.mkdir(parents=True, exist_ok=True)
    (m / "summary.json").write_text(json.dumps({"gate": {"metric": metric, "mode": mode, "test": {
        "mode": mode, "prompts": prompts, "estimate": estimate_, "sd": sd, "alpha": 0.025}}}))
    return m


def test_nothing_measured_yet_says_so(tmp_path, coverage_dir):
    from llamaduo.coverage.prepare import prepare

    p = with_split(coverage_dir)
    plan = estimate.plan(p, {0: 0, 1: 100}, metrics_dir=tmp_path / "none")
    zero, one = plan["cycles"]
    assert plan["measured_from"].startswith("nothing measured yet")
    assert zero["stages"]["judge"]["calls"] is None and not zero["complete"] and zero["wall_s"] is None
    # the fewest requests volume 100 can take: every pair asked for kept
    assert one["stages"]["synthesize"]["calls"] == 25 and one["stages"]["synthesize"]["usd"] is None
    # the test prompts are the split's; with no eval yet the spread, and so the power, is unknown: no figure is made up
    test_rows = prepare(coverage_dir=str(coverage_dir), tasks=["summarize"], train_ratio=0.5, seed=1, max_rows_per_task=None)[1]
    assert zero["power"]["prompts"] == len(test_rows) == 10
    assert zero["power"]["sd"] is None and zero["power"]["detectable"] is None and zero["power"]["prompts_needed"] is None
    assert estimate.describe(zero) == (
        "cycle 0 (volume 0): 0 paid calls, 0 tokens, $0.0000 + baseline, judge not measured yet, about ? s; gate (rouge_l "
        "non_inferiority): 10 test prompts; the difference they detect is unknown until an eval measures the spread "
        "(no eval measured yet: cycle 0 measures it)")
    assert [line.split()[-1] for line in estimate.table(plan).splitlines()[2:4]] == ["?", "?"]


def test_power_comes_from_the_last_evals_spread_at_each_cycles_share_of_alpha(tmp_path, coverage_dir):
    from llamaduo import intervals

    p = with_split(coverage_dir, alpha=0.05)  # loop.max_cycles 3
    # a loop at cycle 1 that spent 0.02 in cycle 0: cycles 1 and 2 get (0.05 - 0.02) / 2 each
    plan = estimate.plan(p, {1: 100, 2: 200}, alpha_spent=0.02, metrics_dir=last_eval(tmp_path))
    for est in plan["cycles"]:
        pw = est["power"]
        assert pw["alpha"] == pytest.approx(0.015) and pw["prompts"] == 10 and pw["sd"] == 8.0
        assert pw["detectable"] == round(intervals.detectable(8.0, 10, 0.015), 3)
        # the noncentral t's: above the normal approximation's (z_0.985 + z_0.8) 8 / sqrt(10) = 7.57
        assert 7.6 < pw["detectable"] < 9.5
        assert pw["prompts_needed"] == intervals.prompts_needed(8.0, 2.0, 0.015)
        assert 142 <= pw["prompts_needed"] <= 155  # normal approximation: ((2.17 + 0.84) 8 / 2)^2 = 145
        assert (pw["target"], pw["target_is"], pw["underpowered"]) == (2.0, "the margin", True)
    text = estimate.describe(plan["cycles"][0])
    assert text.endswith(f"; gate (rouge_l non_inferiority): 10 test prompts detect {pw['detectable']:.2f} points at 80% "
                         f"power (alpha 0.015, spread 8.00); the margin 2 (more than the test set detects) needs "
                         f"{pw['prompts_needed']} test prompts")
    lines = estimate.table(plan).splitlines()
    assert lines[2].split()[-1] == lines[3].split()[-1] == f"{pw['detectable']:.2f}"
    assert "spread: the last eval's paired differences local - service over 10 prompts (metrics/summary.json)" in lines[-1]

    # a new loop of 3 cycles: a third of alpha each
    fresh = estimate.plan(p, {0: 0, 1: 100, 2: 200}, metrics_dir=last_eval(tmp_path))
    assert [c["power"]["alpha"] for c in fresh["cycles"]] == pytest.approx([0.05 / 3] * 3)


def test_threshold_power_asks_about_the_distance_to_the_bar_and_another_test_has_no_spread(tmp_path, coverage_dir):
    from llamaduo import intervals

    p = with_split(coverage_dir, mode="threshold", threshold=70.0)
    # the last eval's mean 76 sits 6 points above the bar: the power question is that distance, not the margin
    pw = estimate.plan(p, {1: 100}, metrics_dir=last_eval(tmp_path / "a", mode="threshold", sd=5.0, estimate_=76.0))["cycles"][0]["power"]
    assert (pw["target"], pw["target_is"], pw["alpha"]) == (6.0, "the distance to the threshold", 0.025)  # cycle 1 of 3
    assert pw["prompts_needed"] == intervals.prompts_needed(5.0, 6.0, 0.025) and pw["underpowered"] is False
    assert pw["detectable"] == round(intervals.detectable(5.0, 10, 0.025), 3) < 6.0
    # below the bar, the margin stands in
    pw = estimate.plan(p, {1: 100}, metrics_dir=last_eval(tmp_path / "b", mode="threshold", sd=5.0, estimate_=60.0))["cycles"][0]["power"]
    assert (pw["target"], pw["target_is"]) == (2.0, "the margin")
    # the last eval tested another metric: its spread says nothing about this test's
    pw = estimate.plan(p, {1: 100}, metrics_dir=last_eval(tmp_path / "c", metric="precision", mode="threshold"))["cycles"][0]["power"]
    assert pw["sd"] is None and pw["detectable"] is None
    assert pw["sd_from"] == "the last eval tested precision threshold, not rouge_l threshold"
    # the point rule bounds nothing
    point = estimate.plan(with_split(coverage_dir, mode="point", threshold=70.0), {1: 100}, metrics_dir=last_eval(tmp_path / "d"))
    assert point["cycles"][0]["power"]["alpha"] is None
    assert estimate.describe(point["cycles"][0]).endswith("the point rule bounds nothing, so it has no power to state")
    assert estimate.table(point).splitlines()[2].split()[-1] == "-"


def test_the_estimate_is_recorded_once_and_shown_beside_what_was_paid(tmp_path, monkeypatch, capsys):
    from llamaduo.project import status
    from llamaduo.reporting import html_report, page_data

    monkeypatch.chdir(tmp_path)
    m = measured(tmp_path)
    p = Params.model_validate(PARAMS)
    first = estimate.plan(p, {2: 200}, metrics_dir=m)["cycles"][0]
    assert estimate.record(first) == first
    assert estimate.record(first | {"calls": 1}) == first  # a resumed cycle keeps the estimate made before it first ran
    assert estimate.recorded(2) == json.loads(json.dumps(first)) and estimate.recorded(3) is None

    history = json.loads((m / "history.json").read_text()) + [
        {"cycle": 2, "volume": 200, "metric": "precision", "score": 50.0, "precision": 50.0, "ci95": [40.0, 60.0], "calls": 170,
         "cost_usd": 0.875, "estimate": estimate.recorded(2)}]
    write_json(m / "history.json", history)
    rows = [line.split() for line in status(tmp_path).splitlines() if line.startswith("      2")]
    assert rows[0][-4:] == ["170", "$0.8750", "175", "$0.9060"]
    text = html_report.write(tmp_path / "r.html", page_data.load(metrics_dir=m, data_dir=tmp_path / "none")).read_text()
    assert "<th>estimated calls</th><th>estimated cost (USD)</th>" in text
    assert '<td class="num">170</td><td class="num">0.88</td><td class="num">175</td><td class="num">0.91</td></tr>' in text


def test_loop_dry_run_prints_the_plan_and_runs_nothing(tmp_path, monkeypatch, capsys):
    import yaml

    monkeypatch.chdir(tmp_path)
    measured(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    write_json(tmp_path / paths.LOOP_STATE, {"cycle": 2, "stopped_by": None, "started_at": 1000.0, "cycles": {}})
    # what the loop paid so far is the call cache's record since it started, not an earlier call
    from llamaduo.providers.base import ChatResult, Choice
    from llamaduo.providers.cache import CallCache

    with CallCache(tmp_path / ".llamaduo" / "calls.sqlite") as cache:
        answer = ChatResult(choices=[Choice(text="ok", finish_reason="stop")], input_tokens=10, output_tokens=2)
        cache.put("paid", "svc", answer, cost_usd=0.2)
        cache.put("earlier", "svc", answer, cost_usd=5.0)
    with sqlite3.connect(tmp_path / ".llamaduo" / "calls.sqlite") as db:  # paid before the loop started
        db.execute("UPDATE calls SET created = 999 WHERE key = 'earlier'")
    assert cli.main(["loop", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "pre-flight estimate (measured in cycle 1); spent so far in this loop: $0.2000 of `loop.max_cost_usd` $0.5"
    # no coverage files in this folder: the power cannot be worked out, and the plan says why
    assert out[2].split() == ["2", "200", "175", "334500", "0.9060", "1360", "$1.1060", "?", "<-", "over", "the", "budget"]
    assert out[-2].startswith("  cycle 2 gate (precision non_inferiority): test prompts unknown (the split cannot be read: ")
    assert "cycle 2 synthesize: 55 calls, $0.3300 (2.50 curated pairs per request and 25 requests cached" in out[3]
    assert not (tmp_path / ".git").exists() and not (tmp_path / paths.ESTIMATE).exists()
