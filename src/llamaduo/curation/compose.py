"""Curation of synthetic pairs: the steps of `steps.Plan` run by an executor (`local.py` in this process, or
`distributed.py` on a Ray cluster: the same result, byte for byte), and the outcome built once (`outcome.py`).

Rows are taken in (cycle, position) order and each is judged only against train and the rows kept before it, so
earlier cycles win a duplicate set, a set is never dropped whole, and adding rows at the end never changes the
decision on an earlier row (synthesis relies on that to count curated pairs incrementally). Each row is dropped for
the first check it fails, in this order: quality rules (quality.py), test contamination (decontam.py), exact
duplicate, near duplicate (duplicates.py). The quality rules are first calibrated per task on train (the task's own
human rows): a rule that would drop more than `max_coverage_drop` of them is loosened or switched off for that task,
and the counts say so.
"""

from __future__ import annotations

from pathlib import Path

from llamaduo.curation.local import LocalExecutor
from llamaduo.curation.source import ListRows, ListSink, ParquetRows, ParquetSink
from llamaduo.curation.steps import Plan


def _executor(cluster, stats: dict | None):
    """`cluster` (ClusterParams) with `engine: ray`: that Ray cluster; else this process."""
    if cluster is not None and cluster.engine == "ray":
        from llamaduo.curation.distributed import RayExecutor  # Ray is imported only on this path

        return RayExecutor(cluster, stats)
    return LocalExecutor()


def curate(raw: list[dict], *, train: list[dict], test: list[dict], p, cluster=None,
           stats: dict | None = None) -> tuple[list[dict], list[dict], dict]:
    """(kept rows, dropped rows with `reason`, counts). The first of a duplicate set is kept, never both dropped.
    Rows keep every key they came with, kept and dropped alike."""
    rows, plan, sink = ListRows(raw), Plan(p, train, test), ListSink()
    with _executor(cluster, stats) as executor:
        counts = executor.write(rows, executor.decide(rows, plan), plan, sink)
    return sink.kept, sink.dropped, counts


def curate_parquet(raw: str | Path, *, out: str | Path, dropped_out: str | Path, train: list[dict], test: list[dict], p,
                   cluster=None, stats: dict | None = None) -> dict:
    """Curate the `synthetic` table at `raw` into `out` (the kept rows, every column) and `dropped_out` (table
    `dropped`: the pair and its reason), streamed (the rows are never all in memory); return the counts."""
    rows, plan = ParquetRows(raw), Plan(p, train, test)
    with _executor(cluster, stats) as executor:
        return executor.write(rows, executor.decide(rows, plan), plan, ParquetSink(out, dropped_out))
