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


def test_nothing_measured_yet_says_so(tmp_path):
    p = Params.model_validate(PARAMS)
    plan = estimate.plan(p, {0: 0, 1: 100}, metrics_dir=tmp_path / "none")
    zero, one = plan["cycles"]
    assert plan["measured_from"].startswith("nothing measured yet")
    assert zero["stages"]["judge"]["calls"] is None and not zero["complete"] and zero["wall_s"] is None
    # the fewest requests volume 100 can take: every pair asked for kept
    assert one["stages"]["synthesize"]["calls"] == 25 and one["stages"]["synthesize"]["usd"] is None
    assert estimate.describe(zero) == "cycle 0 (volume 0): 0 paid calls, 0 tokens, $0.0000 + baseline, judge not measured yet, about ? s"


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
    assert out[2].split() == ["2", "200", "175", "334500", "0.9060", "1360", "$1.1060", "<-", "over", "the", "budget"]
    assert "cycle 2 synthesize: 55 calls, $0.3300 (2.50 curated pairs per request and 25 requests cached" in out[3]
    assert not (tmp_path / ".git").exists() and not (tmp_path / paths.ESTIMATE).exists()
