"""`llamaduo capture`: read the enabled sources, select, clean, and add the new rows to the tasks' coverage files.

Each (task, source) pair has one file, `<data.coverage_dir>/<task>/<source>.jsonl`, which `coverage.prepare` reads
with the task's other files. A run is incremental: a call whose row id (`<source>:<source id>`) the file holds already
is passed over, so a re-run adds only what is new and never a row twice. Nothing is written before every source has
been read whole: an error (a broken file, a call that cannot become a row, an unreachable server) leaves every file
as it was, and each file is replaced atomically (`llamaduo.atomic`), so a crash mid-write leaves the previous file
whole. The summary (counts by source, reason and task, the secrets found by kind, links to the MLflow traces kept)
is printed and written to `metrics/capture.json`; it names no text of a row.

A call dropped for a reason the call itself decides (a failed call, a truncated answer, a secret with `pii: drop`, a
duplicate) is recorded with a fingerprint of the settings that decided it (`dropped.py`); the next capture passes
over it without judging it again (nor, for OpenAI, fetching its messages) and counts it under `dropped_before`,
apart from the new drops, until those settings change. The record is written last, so a crash leaves it behind the
coverage files at worst: a call it misses is judged again, never lost.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from llamaduo.atomic import replacing, write_json
from llamaduo.capture import hygiene
from llamaduo.capture.dropped import Dropped
from llamaduo.capture.record import CaptureError, Exchange, query_text
from llamaduo.capture.select import Selection
from llamaduo.coverage.prepare import check_row, held_rows, read_file, side_score, split
from llamaduo.errors import CoverageError

LINKS_SHOWN = 20  # links to kept traces in the summary, per source


def enabled(p) -> list[str]:
    c = p.capture
    return [s for s, on in (("mlflow", c.mlflow.experiment), ("openai", c.openai.enabled), ("otlp", c.otlp.files)) if on]


def _selection_query(c) -> dict:
    return {k: v for k, v in {"task_key": c.task_key, "tasks_by_system": sorted(c.tasks_by_system), "tags": c.tags,
                              "models": c.models, "routes": c.routes, "since": c.since, "until": c.until}.items() if v}


def _reader(source: str, p, skip) -> tuple[dict, Iterator[Exchange]]:
    """(the capture query, the exchanges) of one source. `skip(source_id)` names the calls dropped before: a source
    that fetches a call's messages apart (OpenAI) gives those with their id only."""
    c = p.capture
    if source == "mlflow":
        from llamaduo.capture import mlflow_traces

        return mlflow_traces.query(c.mlflow), mlflow_traces.read(c.mlflow)
    if source == "openai":
        from llamaduo.capture import openai_stored

        return openai_stored.query(c.openai, c), openai_stored.read(c.openai, c, skip=skip)
    from llamaduo.capture import otlp

    paths = otlp.files(c.otlp.files)
    return {"files": [str(x) for x in paths]}, (ex for path in paths for ex in otlp.read(path))


def target(coverage_dir: str | Path, task: str, source: str) -> Path:
    return Path(coverage_dir) / task / f"{source}.jsonl"


def capture(p, *, sources: list[str] | None = None, summary_out: str | Path | None = "metrics/capture.json",
            dry_run: bool = False, recheck: bool = False) -> dict:
    """Read, select, clean and add the new rows; `recheck` judges the calls dropped before again, whatever the
    record of drops says."""
    c = p.capture
    sources = sources or enabled(p)
    selection = Selection(c)
    scrubber = hygiene.Scrubber(c.pii_kinds, c.phone_regions) if c.pii != "keep" and c.pii_kinds else None
    summary: dict = {"sources": {}, "tasks": {}, "pii": {}, "pii_action": c.pii}
    new: dict[tuple[str, str], list[tuple[dict, dict, str | None]]] = defaultdict(list)
    known: dict[tuple[str, str], set[str]] = {}
    pii = Counter()
    dropped = Dropped(p.data.coverage_dir, p, recheck=recheck)
    with contextlib.ExitStack() as stack:
        if scrubber is not None:
            stack.enter_context(scrubber.active())
        for source in sources:
            _read_source(source, p, selection, scrubber, summary, new, known, pii, dropped)
    _write(p, summary, new, dry_run, dropped)
    if not dry_run:
        dropped.save()
    for s in summary["sources"].values():
        s.setdefault("kept", 0)
        s["dropped"] = dict(sorted(s["dropped"].items()))
        s["dropped_before"] = dict(sorted(s["dropped_before"].items()))
    summary["pii"] = {k: pii[k] for k in c.pii_kinds}
    if summary_out is not None and not dry_run:
        write_json(summary_out, summary)
    return summary


def _read_source(source, p, selection, scrubber, summary, new, known, pii, log: Dropped) -> None:
    """Read one source whole into `new` ((task, source) -> rows), counting into `summary` and `pii`, and recording
    its drops in `log`."""
    c, d = p.capture, p.data
    query, exchanges = _reader(source, p, lambda sid: log.before(f"{source}:{sid}") is not None)
    qtext = query_text({"source": source, **query, **_selection_query(c)})
    counts, dropped, rated, before = Counter(), Counter(), Counter(), Counter()
    for ex in exchanges:
        counts["read"] += 1
        if ex.rating is not None:
            rated[ex.rating] += 1
        row_id = f"{source}:{ex.source_id}"
        reason = log.before(row_id)
        if reason is not None:
            before[reason] += 1
            continue
        task, obj, reason = selection.decide(ex)
        if reason is not None:
            dropped[reason] += 1
            log.record(row_id, reason)
            continue
        log.forget(row_id)  # judged again and kept this time (a setting changed): its old record goes
        key = (task, source)
        if key not in known:
            path = target(d.coverage_dir, task, source)
            known[key] = {str(o.get("id")) for _, o in read_file(path)} if path.is_file() else set()
        if row_id in known[key]:
            counts["already_captured"] += 1
            continue
        known[key].add(row_id)  # the same call twice in one read (overlapping files) is one row
        if scrubber is not None:
            obj["messages"], found = hygiene.scrub_messages(obj["messages"], scrubber)
            pii += found
            if found and c.pii == "drop":
                dropped["pii"] += 1
                log.record(row_id, "pii")
                continue
        obj = {"id": row_id, **obj, "source": source, "source_id": ex.source_id, "capture_query": qtext}
        try:
            pair = check_row(task, obj, ex.where)  # the limits and errors of every coverage row, naming the call
        except CoverageError as exc:
            raise CaptureError(str(exc)) from None
        new[key].append((obj, pair, ex.link))  # not the record: memory keeps the row only, page after page
    summary["sources"][source] = {"query": json.loads(qtext), "read": counts["read"],
                                  "already_captured": counts["already_captured"], "dropped": dict(dropped),
                                  "dropped_before": dict(before),
                                  **({"ratings": dict(sorted(rated.items()))} if rated else {})}


def _write(p, summary, new, dry_run: bool, log: Dropped) -> None:
    """Hygiene against what each task holds (every task first: a task's broken file stops the run before any
    write), then each (task, source) file written."""
    c, d = p.capture, p.data
    writes = []
    for task in sorted({t for t, _ in new}):
        held = held_rows(d.coverage_dir, task)
        test_rows = split(held, train_ratio=d.train_ratio, seed=d.seed)[1] if len(held) >= 2 else []
        batch = [(obj, pair, link, source) for (t, source), items in sorted(new.items()) if t == task for obj, pair, link in items]
        reasons = {}
        if c.dedup:
            _, reasons = hygiene.drop_duplicates([pair for _, pair, _, _ in batch], held=held, test=test_rows,
                                                 curate_params=p.curate)
        t = summary["tasks"].setdefault(task, {"held": len(held), "added": {}, "dropped": {}, "to_test": 0})
        for source in sorted({s for *_, s in batch}):
            keep = [(obj, link) for obj, pair, link, s in batch if s == source and pair["id"] not in reasons]
            for _, pair, _, s in batch:
                if s == source and pair["id"] in reasons:
                    why = reasons[pair["id"]]
                    log.record(pair["id"], why)
                    t["dropped"][why] = t["dropped"].get(why, 0) + 1
                    src = summary["sources"][source]["dropped"]
                    src[why] = src.get(why, 0) + 1
            t["added"][source] = len(keep)
            # a row the hash puts in test is flagged: it joins the gate's test rows, not training
            t["to_test"] += sum(side_score(obj["id"], d.seed) >= d.train_ratio for obj, _ in keep)
            summary["sources"][source]["kept"] = summary["sources"][source].get("kept", 0) + len(keep)
            links = [link for _, link in keep if link][:LINKS_SHOWN]
            if links:
                summary["sources"][source].setdefault("links", []).extend(links)
            if keep:
                writes.append((target(d.coverage_dir, task, source), [obj for obj, _ in keep]))
        t["unlisted"] = task not in d.tasks
    for path, rows in writes if not dry_run else []:
        _append(path, rows)


def _append(path: Path, rows: list[dict]) -> None:
    """The file's rows as they are, then the new ones; written whole to a temp file and renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_bytes() if path.is_file() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    with replacing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(old)
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False).encode() + b"\n")


def report(summary: dict) -> str:
    """The summary as a person reads it in the terminal."""
    lines = []
    for source, s in summary["sources"].items():
        dropped = ", ".join(f"{k} {v}" for k, v in s["dropped"].items()) or "none"
        before = sum(s.get("dropped_before", {}).values())
        lines.append(f"{source}: read {s['read']}, kept {s['kept']} new, {s['already_captured']} already captured; "
                     f"dropped: {dropped}" + (f"; skipped {before} dropped before" if before else ""))
        if "ratings" in s:
            r = s["ratings"]
            lines.append(f"  ratings: {r.get('positive', 0)} positive, {r.get('negative', 0)} not positive, "
                         f"{r.get('unrated', 0)} unrated ({1 - r.get('unrated', 0) / max(1, s['read']):.0%} rated)")
        for link in s.get("links", [])[:5]:
            lines.append(f"  {link}")
    for task, t in summary["tasks"].items():
        added = sum(t["added"].values())
        note = " (not in data.tasks: add it there to train on it)" if t["unlisted"] else ""
        lines.append(f"task {task}: +{added} rows ({t['to_test']} of them to test) onto {t['held']}{note}")
    found = ", ".join(f"{k} {v}" for k, v in summary["pii"].items() if v)
    if found:
        lines.append(f"secrets and personal data ({summary['pii_action']}): {found}")
    return "\n".join(lines)
