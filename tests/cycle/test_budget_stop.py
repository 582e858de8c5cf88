"""A loop the cost budget stopped between cycles is paused, not ended: the next `llamaduo loop` resumes it at the same
cycle, from the same start, so what it paid before still counts; a raised `loop.max_cost_usd` lets it go on against
the new cap with the same spent total, and a stage run by hand meanwhile spends from the same budget. (The budget
stopping a stage mid-way is in tests/providers/test_budget.py.)"""

import json
import sqlite3
import time

import pytest
import yaml
from cycle.test_loop_faults import repo  # noqa: F401  (the git project the loop's fault tests run in)

from llamaduo import budget, cli, paths
from llamaduo.config import load_params
from llamaduo.cycle import driver
from llamaduo.errors import LoopError
from llamaduo.providers.base import ChatResult, Choice
from llamaduo.providers.cache import CallCache

# a dvc that fails at once: a cycle that gets past the budget check runs it and stops there, which is what shows it ran
NO_DVC = ("sh", "-c", "exit 3", "dvc")


def setup(root, cap, started):
    (root / "params.yaml").write_text(yaml.safe_dump({
        "cache": {"path": str(root / ".llamaduo" / "calls.sqlite")},
        "mlflow": {"tracking_uri": f"sqlite:///{root}/mlruns/mlflow.db"},
        "loop": {"max_cycles": 3, "start_volume": 4, "max_cost_usd": cap, "allow_unread_rows": True}}))
    # the loop after cycle 0: its decision spent 0.025 of the gate's error
    (root / ".llamaduo").mkdir(exist_ok=True)
    paths.LOOP_STATE.write_text(json.dumps({"cycle": 1, "parent_run_id": None, "stopped_by": None, "started_at": started,
                                            "cycles": {"0": {"commit": "c0", "gate": False, "alpha": 0.025}}}))
    answer = ChatResult(choices=[Choice(text="ok", finish_reason="stop")], input_tokens=10, output_tokens=2)
    with CallCache(root / ".llamaduo" / "calls.sqlite") as cache:
        cache.put("in-loop", "svc", answer, cost_usd=0.6)    # paid by this loop
        cache.put("before", "svc", answer, cost_usd=5.0)     # paid before it started: never counted
    with sqlite3.connect(root / ".llamaduo" / "calls.sqlite") as db:
        db.execute("UPDATE calls SET created = ? WHERE key = 'before'", (started - 10,))


def set_cap(root, cap):
    doc = yaml.safe_load((root / "params.yaml").read_text())
    doc["loop"]["max_cost_usd"] = cap
    (root / "params.yaml").write_text(yaml.safe_dump(doc))


def test_a_budget_stop_is_resumed_counting_what_the_loop_paid(repo, monkeypatch, capsys):  # noqa: F811
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    started = time.time() - 100
    setup(repo, 0.5, started)

    state = driver.run("params.yaml", dvc=NO_DVC, allow_dirty=True)
    assert state["stopped_by"].startswith("cost budget: $0.6000 spent of `loop.max_cost_usd` $0.5 before cycle 1")
    assert "it resumes at cycle 1 and counts the $0.6000 already spent" in state["stopped_by"]
    assert state["budget_stop"] == {"spent_usd": pytest.approx(0.6), "max_cost_usd": 0.5}
    parent = state["parent_run_id"]
    # stopped, yet its spending still counts: a stage run by hand now stops before a paid call
    assert budget.loop_budget(load_params("params.yaml")).since == started

    # the same cap again: the same loop, the same spent total, stopped again before paying anything
    state = driver.run("params.yaml", dvc=NO_DVC, allow_dirty=True)
    err = capsys.readouterr().err
    assert ("resuming the loop the cost budget stopped at cycle 1: $0.6000 spent before counts against "
            "`loop.max_cost_usd` $0.5") in err
    assert "starting a new loop" not in err
    assert state["stopped_by"].startswith("cost budget: $0.6000 spent") and state["cycle"] == 1
    assert (state["started_at"], state["parent_run_id"], driver.alpha_spent(state)) == (started, parent, 0.025)

    # the pre-flight estimate of the paused loop: cycles 1 and 2, with what was spent before
    assert cli.main(["plan"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("spent so far in this loop: $0.6000 of `loop.max_cost_usd` $0.5")
    assert [line.split()[0] for line in out[2:4]] == ["1", "2"]

    # a raised cap: the loop goes on at cycle 1 against it, with the $0.60 already counted
    set_cap(repo, 1.0)
    with pytest.raises(LoopError, match=r"`dvc repro` failed in cycle 1 \(exit 3\)"):
        driver.run("params.yaml", dvc=NO_DVC, allow_dirty=True)
    err = capsys.readouterr().err
    assert "resuming the loop the cost budget stopped at cycle 1: $0.6000 spent before counts against `loop.max_cost_usd` $1" in err
    state = json.loads(paths.LOOP_STATE.read_text())
    assert state["stopped_by"] is None and "budget_stop" not in state and state["started_at"] == started
    est = json.loads((repo / paths.ESTIMATE).read_text())["1"]
    assert est["spent_by_end_usd"] == pytest.approx(0.6 + est["usd"])
    # cycle 1 tests at what cycle 0 left over the cycles left: (0.05 - 0.025) / 2
    assert load_params("params.yaml").gate.cycle_alpha == pytest.approx(0.0125)


def test_other_stops_still_start_a_new_loop(repo, monkeypatch, capsys):  # noqa: F811
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    started = time.time() - 100
    setup(repo, 0.5, started)
    state = json.loads(paths.LOOP_STATE.read_text())
    paths.LOOP_STATE.write_text(json.dumps(state | {"stopped_by": "max cycles: `loop.max_cycles` is 3"}))
    assert budget.loop_budget(load_params("params.yaml")) is None  # an ended loop caps nothing
    set_cap(repo, 1.0)
    with pytest.raises(LoopError, match=r"`dvc repro` failed in cycle 0"):
        driver.run("params.yaml", dvc=NO_DVC, allow_dirty=True)
    assert "the last loop stopped (max cycles: `loop.max_cycles` is 3); starting a new loop at cycle 0" in capsys.readouterr().err
    state = json.loads(paths.LOOP_STATE.read_text())
    assert state["started_at"] > started and list(state["cycles"]) == ["0"] and driver.alpha_spent(state) == 0
