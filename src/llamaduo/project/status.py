"""`llamaduo status`: where the loop stands, read from the files the loop and the report stage write. It starts
nothing (no DVC, no MLflow, no server), so it is instant and safe beside a running loop."""

from __future__ import annotations

import json
from pathlib import Path

from llamaduo import paths

DEFAULT_CACHE = ".llamaduo/calls.sqlite"  # config.CacheParams' default, when params.yaml does not set `cache.path`


def _read(path: Path, default):
    """A state file's JSON, or `default` when it is absent; a file being rewritten is replaced atomically, so a
    partial read cannot happen, but a hand-edited broken one is named."""
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return {"_unreadable": f"{path}: not valid JSON ({exc.msg})"}


def _interval(ci) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci[:2] else "[-]"


def _estimated(est: dict | None) -> tuple[str, str]:
    """A cycle's pre-flight estimate (metrics/estimate.json) as (calls, cost); "+?" where a stage was not measured yet."""
    if not est:
        return "-", "-"
    more = "" if est.get("complete", True) else "+?"
    return f"{est.get('calls', '?')}", f"${est.get('usd') or 0:.4f}{more}"


def _cache_path(root: Path) -> Path:
    import yaml

    params = root / "params.yaml"
    raw = yaml.safe_load(params.read_text()) if params.is_file() else {}
    return root / (((raw or {}).get("cache") or {}).get("path") or DEFAULT_CACHE)


def _paid(root: Path, since: float | None) -> dict | None:
    """The call cache's record of the calls paid since `since` (each priced when paid, so calls of a stage that
    crashed count too), as the loop's cost budget reads it; None without a cache."""
    from llamaduo.providers.cache import CallCache

    path = _cache_path(root)
    if not path.is_file():  # opening a missing cache would create it
        return None
    cache = CallCache(path)
    try:
        return cache.paid(since=since)
    finally:
        cache.close()


def status(root: str | Path = ".") -> str:
    """The status report as text, one fact a line."""
    root = Path(root)
    state = _read(root / paths.LOOP_STATE, None)
    history = _read(root / paths.HISTORY, [])
    champion = _read(root / paths.CHAMPION, {})
    summary = _read(root / paths.SUMMARY, {})
    lines = []
    for doc in (state, history, champion, summary):
        if isinstance(doc, dict) and "_unreadable" in doc:
            lines.append(f"warning: {doc['_unreadable']}")
    state = state if isinstance(state, dict) and "_unreadable" not in state else None
    history = history if isinstance(history, list) else []

    if state is None and not history:
        lines.append("loop: no loop has run here (`llamaduo loop` starts one)")
    elif state is None:
        lines.append(f"loop: no state file ({paths.LOOP_STATE}); metrics/history.json holds {len(history)} cycle(s)")
    elif state.get("stopped_by"):
        lines.append(f"loop: stopped at cycle {state.get('cycle')}: {state['stopped_by']}")
    else:
        lines.append(f"loop: at cycle {state.get('cycle')}, not stopped (running now, or interrupted: "
                     f"`llamaduo loop` resumes there)")

    if history:
        lines.append("cycles (paid, and the pre-flight estimate made before the cycle ran):")
        lines.append(f"  {'cycle':>5} {'volume':>8} {'train rows':>10}  {'score':<22} {'95% interval':<18} {'paid calls':>10} {'cost':>9}"
                     f" {'est. calls':>10} {'est. cost':>10}")
        for h in sorted(history, key=lambda h: h.get("cycle", 0)):
            score = f"{h.get('metric', '?')} {h['score']:.2f}" if isinstance(h.get("score"), (int, float)) else "-"
            est_calls, est_cost = _estimated(h.get("estimate"))
            lines.append(f"  {h.get('cycle', '?'):>5} {h.get('volume', '-'):>8} {str(h.get('train_rows', '-')):>10}  "
                         f"{score:<22} {_interval(h.get('ci95')):<18} {h.get('calls', 0):>10} {'$' + format(h.get('cost_usd') or 0, '.4f'):>9}"
                         f" {est_calls:>10} {est_cost:>10}")
    done = {h.get("cycle") for h in history}
    if state is not None and not state.get("stopped_by") and state.get("cycle") not in done:
        ahead = _read(root / paths.ESTIMATE, {})
        est = ahead.get(str(state.get("cycle"))) if isinstance(ahead, dict) else None
        if est:
            calls, usd = _estimated(est)
            lines.append(f"cycle {state['cycle']} (under way or interrupted): estimated {calls} paid calls, {usd}, "
                         f"about {est['wall_s'] if est.get('wall_s') is not None else '?'} s ({paths.ESTIMATE})")

    if isinstance(champion, dict) and champion.get("version") is not None:
        score = champion.get("score")
        lines.append(f"champion: v{champion['version']} (cycle {champion.get('cycle', '?')}), {champion.get('metric', '?')} "
                     f"{score if score is None else f'{score:.2f}'} {_interval([champion.get('ci_low'), champion.get('ci_high')])}")
    else:
        lines.append("champion: none yet (the gate has not passed, and nothing was promoted by hand)")

    since = (state or {}).get("started_at")
    paid = _paid(root, since)
    if paid is not None:
        when = "since this loop started" if since is not None else "in all (no loop state)"
        lines.append(f"spend so far: ${paid['cost_usd']:.4f} for {paid['calls']} paid service calls {when} (the call cache)")
    spent = sum(h.get("cost_usd", 0) or 0 for h in history)
    lines.append(f"{'per cycle' if paid is not None else 'spend so far'}: ${spent:.4f} on service calls over "
                 f"{len(history)} finished cycle(s) (metrics/history.json)")

    gate = summary.get("gate") if isinstance(summary, dict) else None
    if gate:
        verdict = "passed" if gate.get("passed") else "not passed"
        lines.append(f"gate (last report, {paths.SUMMARY}): {verdict}: {gate.get('reason', '')}")
    else:
        lines.append(f"gate: no decision yet ({paths.SUMMARY} is written by the report stage)")
    return "\n".join(lines)
