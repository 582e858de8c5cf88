"""The loop's spending cap as the call engine applies it: `loop.max_cost_usd` over what the calls paid since the
loop started. The loop checks it before each cycle; the engine checks it before each call (and each Batch API
submission), so a stage stops before the call that could cross it, with every answer paid so far in the cache.

The cap applies while a loop is under way (`.llamaduo/loop.json` not marked stopped): a stage run by the loop, or
by hand in a loop that was interrupted, spends from the same budget. Outside a loop no cap applies.
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


def loop_budget(params) -> Budget | None:
    """The budget of the loop under way, or None (no `loop.max_cost_usd`, or no loop under way)."""
    limit = params.loop.max_cost_usd
    if limit is None or not paths.LOOP_STATE.is_file():
        return None
    try:
        state = json.loads(paths.LOOP_STATE.read_text())
    except json.JSONDecodeError:  # written atomically by the loop: only a hand edit breaks it, and then no loop is known
        return None
    if not isinstance(state, dict) or state.get("stopped_by") or state.get("started_at") is None:
        return None
    return Budget(limit, float(state["started_at"]), "loop.max_cost_usd", "the loop started")
