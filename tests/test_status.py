"""`llamaduo status`: where the loop stands, from the state files alone (synthetic ones here: nothing runs)."""

import json
import time

from llamaduo import cli, paths
from llamaduo.atomic import write_json
from llamaduo.project import status
from llamaduo.providers.base import ChatResult, Choice
from llamaduo.providers.cache import CallCache

HISTORY = [
    {"cycle": 1, "volume": 1000, "synthetic_curated": 990, "train_rows": 1350, "metric": "precision", "score": 61.25,
     "ci95": [55.5, 66.75], "calls": 300, "cached": 10, "cost_usd": 1.5, "tokens": 90000,
     "estimate": {"cycle": 1, "calls": 280, "usd": 1.25, "complete": True, "wall_s": 600.0}},
    {"cycle": 0, "volume": 0, "synthetic_curated": 0, "train_rows": 360, "metric": "precision", "score": 37.172,
     "ci95": [31.041, 43.755], "calls": 120, "cached": 0, "cost_usd": 0.25, "tokens": 30000},
]


def write_state(root, *, stopped_by=None, started_at=None):
    write_json(root / paths.LOOP_STATE, {"cycle": 1, "parent_run_id": "abc", "stopped_by": stopped_by,
                                         "started_at": started_at, "cycles": {}})
    write_json(root / paths.HISTORY, HISTORY)
    write_json(root / paths.CHAMPION, {"version": "2", "cycle": 1, "metric": "precision", "score": 61.25,
                                       "ci_low": 55.5, "ci_high": 66.75})
    write_json(root / paths.SUMMARY, {"gate": {"passed": True, "reason": "precision 61.25 >= 60 and above the champion's interval"}})


def test_a_fresh_project_says_no_loop_has_run(tmp_path):
    lines = status(tmp_path).splitlines()
    assert lines == ["loop: no loop has run here (`llamaduo loop` starts one)",
                     "champion: none yet (the gate has not passed, and nothing was promoted by hand)",
                     "spend so far: $0.0000 on service calls over 0 finished cycle(s) (metrics/history.json)",
                     "gate: no decision yet (metrics/summary.json is written by the report stage)"]
    assert not (tmp_path / ".llamaduo").exists()  # reading the state creates nothing


def test_a_stopped_loop_shows_cycles_champion_spend_and_gate(tmp_path):
    write_state(tmp_path, stopped_by="gate passed at cycle 1")
    text = status(tmp_path)
    assert "loop: stopped at cycle 1: gate passed at cycle 1" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("  ") and line.split()[0].isdigit()]
    # ordered by cycle, each with its volume, score and interval, paid calls and cost, and the estimate made before it
    assert rows == [["0", "0", "360", "precision", "37.17", "[31.04,", "43.76]", "120", "$0.2500", "-", "-"],
                    ["1", "1000", "1350", "precision", "61.25", "[55.50,", "66.75]", "300", "$1.5000", "280", "$1.2500"]]
    assert "champion: v2 (cycle 1), precision 61.25 [55.50, 66.75]" in text
    assert "spend so far: $1.7500 on service calls over 2 finished cycle(s) (metrics/history.json)" in text
    assert "gate (last report, metrics/summary.json): passed: precision 61.25 >= 60" in text


def test_an_interrupted_loop_says_where_it_resumes_and_a_broken_file_is_named(tmp_path, monkeypatch, capsys):
    write_state(tmp_path)
    (tmp_path / paths.SUMMARY).write_text("{not json")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "loop: at cycle 1, not stopped (running now, or interrupted: `llamaduo loop` resumes there)" in out
    assert "warning: metrics/summary.json: not valid JSON" in out and "gate: no decision yet" in out
    assert "cycle 1 (under way" not in out  # cycle 1 is in the history: done
    assert json.loads((tmp_path / paths.LOOP_STATE).read_text())["cycle"] == 1  # untouched


def test_spend_comes_from_the_call_cache_since_the_loop_started(tmp_path):
    # the cache prices every paid call when it is paid (a stage that crashed afterwards still cost money); the
    # loop's budget counts the calls since it started, and so does status
    (tmp_path / "params.yaml").write_text("cache:\n  path: state/calls.sqlite\n")
    cache = CallCache(tmp_path / "state" / "calls.sqlite")
    answer = ChatResult(choices=[Choice(text="ok", finish_reason="stop")], input_tokens=10, output_tokens=2)
    cache.put("before", "svc", answer, cost_usd=1.0)  # an earlier loop's call
    time.sleep(0.01)
    started = time.time()
    cache.put("a", "svc", answer, cost_usd=0.5)
    cache.put("b", "svc", answer, cost_usd=0.25)
    cache.close()
    write_state(tmp_path, started_at=started)
    text = status(tmp_path)
    assert "spend so far: $0.7500 for 2 paid service calls since this loop started (the call cache)" in text
    assert "per cycle: $1.7500 on service calls over 2 finished cycle(s)" in text


def test_the_cycle_under_way_shows_its_pre_flight_estimate(tmp_path):
    write_state(tmp_path)
    state = json.loads((tmp_path / paths.LOOP_STATE).read_text())
    write_json(tmp_path / paths.LOOP_STATE, state | {"cycle": 2})
    write_json(tmp_path / paths.ESTIMATE, {"2": {"cycle": 2, "volume": 2000, "calls": 450, "usd": 2.5, "complete": False,
                                                  "wall_s": 1200.0}})
    assert ("cycle 2 (under way or interrupted): estimated 450 paid calls, $2.5000+?, about 1200.0 s "
            "(metrics/estimate.json)") in status(tmp_path)
