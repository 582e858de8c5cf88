"""The loop's spending cap as the call engine applies it: `loop.max_cost_usd` over what the calls paid since the
loop started. The loop checks it before each cycle; the engine checks it before each call (and each Batch API
submission), so a stage stops before the call that could cross it, with every answer paid so far in the cache.

The cap applies while a loop is under way (`.llamaduo/loop.json` not marked stopped, or stopped by this cap): a stage
run by the loop, or by hand in a loop that was interrupted or stopped by its budget, spends from the same budget.
Outside a loop no cap applies.

A stop by the budget is a pause, not an end: the next `llamaduo loop` resumes that loop where it stopped, with the
same start time, so what it paid before still counts. Raising `loop.max_cost_usd` lets it go on against the new cap
with the same spent total; a fresh loop there would count from zero and could spend the whole cap again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from llamaduo import paths


@dataclass(frozen=True)
class Budget:
    limit_usd: float
    since: float        # unix time: the calls stored in the cache at or after it count against the cap
    key: str            # the params key that sets the cap, named in the error
    since_what: str     # what `since` is, in words, for the error


STOP_KEY = "budget_stop"  # in the loop state: what the loop had spent, against which cap, when the budget stopped it


def stopped_by_budget(state: dict) -> bool:
    """The loop stopped before a cycle because its spending reached `loop.max_cost_usd`: the next loop resumes it."""
    return bool(state.get("stopped_by")) and isinstance(state.get(STOP_KEY), dict)


def under_way(state) -> bool:
    """A loop whose spending counts against the cap: not stopped, or stopped by the cap (a pause)."""
    return (isinstance(state, dict) and state.get("started_at") is not None
            and (not state.get("stopped_by") or stopped_by_budget(state)))


def loop_budget(params) -> Budget | None:
    """The budget of the loop under way, or None (no `loop.max_cost_usd`, or no loop under way)."""
    limit = params.loop.max_cost_usd
    if limit is None or not paths.LOOP_STATE.is_file():
        return None
    try:
        state = json.loads(paths.LOOP_STATE.read_text())
    except json.JSONDecodeError:  # written atomically by the loop: only a hand edit breaks it, and then no loop is known
        return None
    if not under_way(state):
        return None
    return Budget(limit, float(state["started_at"]), "loop.max_cost_usd", "the loop started")
