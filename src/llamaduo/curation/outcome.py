"""What curation gives back, built in one place for every executor: the kept rows, the dropped rows with their reason,
and the counts (overall and per cycle, the rows dropped as test leaks, the report's examples, the calibration), from
the steps' verdict and one more pass over the rows in order.
"""

from __future__ import annotations

from collections import Counter

from llamaduo.curation.pipeline import Verdict
from llamaduo.curation.quality import RULES
from llamaduo.curation.source import Rows
from llamaduo.curation.steps import Plan

# characters of each field shown in the report's examples: enough to see what a rule matched, and metrics stay small
EXAMPLE_CHARS = 300
# rows per batch of this pass
BATCH_ROWS = 4096


def outcome(rows: Rows, verdict: Verdict, plan: Plan, sink) -> dict:
    """Send every row to `sink` (`source.ListSink` or `ParquetSink`) kept or dropped with its reason, close it, and
    return the counts."""
    p, n_train, names = plan.p, len(plan.train), plan.codes.names
    # the ids the notes name: train rows' now, synthetic rows' as the pass meets them (always before the row naming them)
    ids = {m: plan.train[m]["id"] for m in verdict.notes.named() if m < n_train}
    wanted = {m - n_train for m in verdict.notes.named() if m >= n_train}
    per_cycle: dict[int, Counter] = {}
    rows_in: Counter = Counter()
    decontaminated, examples = [], {}
    for start, table, dicts in rows.batches(BATCH_ROWS, sink.columns):
        codes = verdict.codes[start:start + len(table)]
        reasons = [names[c] for c in codes.tolist()]
        cycles = table.column("cycle").to_pylist()
        rows_in.update(cycles)
        for cycle, reason in zip(cycles, reasons):
            if reason is not None:
                per_cycle.setdefault(cycle, Counter())[reason] += 1
        row_ids = table.column("id")
        for j in sorted(j for j in wanted if start <= j < start + len(table)):
            ids[n_train + j] = row_ids[j - start].as_py()
        for j in sorted(j for j in verdict.leaks if start <= j < start + len(table)):
            method, test_id = verdict.leaks[j]
            decontaminated.append({"id": row_ids[j - start].as_py(), "test_id": test_id, "method": method})
        for i, reason in enumerate(reasons):
            if reason is not None and len(examples.setdefault(reason, [])) < p.report_examples:
                examples[reason].append(_example(table, i, reason, start + i, verdict, plan, ids))
        sink.add(table, dicts, codes == 0, reasons)
    sink.close()

    def summary(n: int, dropped: Counter) -> dict:
        return {"rows_in": n, "rows_out": n - sum(dropped.values()), "dropped": dict(sorted(dropped.items()))}

    counts = summary(rows.n, sum(per_cycle.values(), Counter())) | {
        "per_cycle": {str(c): summary(rows_in[c], per_cycle.get(c, Counter())) for c in sorted(rows_in)},
        "decontaminated": decontaminated}
    counts["examples"] = dict(sorted((k, v) for k, v in examples.items() if v))
    counts["calibration"] = {"max_coverage_drop": p.max_coverage_drop, "tasks": plan.quality.calibration}
    return counts


def _clip(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + "…"


def _example(table, i: int, reason: str, place: int, verdict: Verdict, plan: Plan, ids: dict[int, str]) -> dict:
    """One dropped row for the report, clipped, with what it matched."""
    row = {c: table.column(c)[i].as_py() for c in ("id", "task", "instruction", "response")}
    if reason in RULES:
        said = plan.quality.detail(reason, row["instruction"], row["response"], row["task"])
    elif place in verdict.leaks:
        method, test_id = verdict.leaks[place]
        said = f"{method} match with test row {test_id}"
    elif place in verdict.notes.text:
        text, names = verdict.notes.text[place]
        said = text + (ids[names] if names is not None else "")
    else:
        said = reason
    return {"id": row["id"], "task": row["task"], "matched": said,
            "instruction": _clip(row["instruction"]), "response": _clip(row["response"])}
