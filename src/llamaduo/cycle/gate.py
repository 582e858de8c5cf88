"""The promotion gate: does this cycle's model replace the champion? One decision, with its reason."""

from __future__ import annotations


def decide(gate: dict, champion: dict | None, p) -> tuple[bool, str]:
    """`gate` holds this cycle's `score` (metrics/summary.json's `gate` entry); `champion` the current champion's
    figures as metrics/champion.json holds them (`version`, `ci_low`), or None / {} when there is none."""
    score = gate.get("score")
    if score is None:
        return False, f"no scored answers for `{p.metric}` (every judgment failed)"
    if p.threshold is not None and score < p.threshold:
        return False, f"{p.metric} {score:.2f} is below the threshold {p.threshold:g}"
    if p.no_regression and champion and champion.get("ci_low") is not None:
        low = float(champion["ci_low"])
        if score < low:
            return False, (f"{p.metric} {score:.2f} is below champion v{champion['version']}'s 95% interval "
                           f"(from {low:.2f})")
    bar = f"threshold {p.threshold:g}" if p.threshold is not None else "no threshold"
    return True, f"{p.metric} {score:.2f} passes ({bar}{', no regression' if champion and p.no_regression else ''})"
