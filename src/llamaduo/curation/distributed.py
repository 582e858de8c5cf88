"""The Ray executor (`cluster.engine: ray`): the steps of `steps.Plan` as Ray tasks, with the same result as the local
executor, byte for byte. The driver (the stage) holds the order-dependent state only, a few bytes a row, never the
rows.

What runs where:
- the rows reach the cluster as Parquet parts of up to `block_rows` rows (the columns the steps read), written by the
  driver a batch at a time into `cluster.storage`, or else into a scratch folder on the driver's machine that tasks
  pinned to its node read. Either way the blocks then live in the object store; the parts are removed at the end.
- per block, a task runs the row steps (quality rules, decontamination against the test split, which every task
  carries, the fingerprint) and returns its findings (reasons, leaks, exact keys) and the signatures apart.
- the driver runs the exact step over the findings, block by block in order (its state: 16 bytes a key).
- the LSH: one task per share of the bands (`NearDuplicates.buckets`, rank of world_size) over the signatures of
  the rows still kept, its close pairs split by the block of their later row.
- per block, a task merges that block's pairs from every share and scores them (`NearDuplicates.score`), fetching
  the rows they touch from the object store. It scores every pair, also those the walk will skip (the local
  executor scores a pair only when the walk reads it): so every block is scored at once, not one after another.
  It sends back only the pairs that confirm (`NearDuplicates.confirms`): no other pair can drop a row.
- the driver walks each block's confirming pairs in order (`NearDuplicates.run`; its state: a byte a row).
- the outcome (kept and dropped rows, counts) is one more pass over the rows in order (outcome.py): for the stage's
  files, in a task pinned to the driver's node, which writes them there.
`stats` (a dict, if given) receives the nodes that ran each kind of task and the workers' peak memory.
"""

from __future__ import annotations

import contextlib
import resource
import tempfile
import time
import uuid
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llamaduo.curation.duplicates import ExactDuplicates, NearDuplicates, Pairs
from llamaduo.curation.outcome import outcome
from llamaduo.curation.pipeline import ROW_COLUMNS, Batch, Notes, Verdict
from llamaduo.curation.source import ParquetRows, Rows
from llamaduo.curation.steps import Plan
from llamaduo.curation.tokens import tokenize


def _here() -> tuple[str, float]:
    """(this task's node, its worker's peak memory so far in MB)."""
    from llamaduo.cluster.ray import node_id

    return node_id(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _read_part(fs, path: str) -> pa.Table:
    with fs.open(path, "rb") as f:
        return pq.read_table(f)


def _row_steps(rows: pa.Table, start: int, plan: Plan):
    """A block through the row steps: (its findings and where they were computed, its signatures)."""
    batch = next(plan.run([Batch.of(start, rows)]))
    return (batch.findings(), *_here()), batch.sig


def _near(plan: Plan, n: int) -> NearDuplicates:
    return NearDuplicates(plan.p, n_train=len(plan.train), n=n, codes=plan.codes, notes=Notes(0))


def _buckets(plan: Plan, n: int, rank: int, world_size: int, sig_refs: list, starts: list[int], considered: np.ndarray):
    """One share of the LSH bands over the rows still kept: its close pairs, one array per synthetic block (by
    the block of the later row), then where it ran."""
    import ray

    n_train, step = len(plan.train), _near(plan, n)
    keep = np.concatenate([np.ones(n_train, dtype=bool), considered])
    sigs = ray.get(sig_refs)
    sig = np.concatenate([s[keep[lo:lo + len(s)]] for s, lo in zip(sigs, starts)])
    del sigs
    code = step.buckets(sig, np.flatnonzero(keep), rank, world_size)
    cut = np.searchsorted(code // step.n_rows, starts[2:])  # block 0 is train: a later row is never there
    return (*np.split(code, cut), _here())


def _score(plan: Plan, n: int, row_refs: list, starts: list[int], *pieces: np.ndarray):
    """One block's close pairs, from every share of the bands, each once, scored: (the codes of those that confirm, in
    the walk's order, their ROUGE-L and their responses', how many close pairs the block had, where it ran). Only a
    confirming pair can drop a row, so the walk over these alone decides what the walk over all of them would: the
    driver gets a few pairs a block, not every candidate."""
    import ray

    step = _near(plan, n)
    code = np.unique(np.concatenate(pieces))
    if not len(code):
        return code, np.zeros(0), np.zeros(0), 0, _here()
    score, answers = np.zeros(len(code)), np.zeros(len(code))
    earlier, later = code % step.n_rows, code // step.n_rows
    touched = np.unique(np.concatenate([earlier, later]))
    block = np.searchsorted(starts, touched, side="right") - 1
    need = np.unique(block).tolist()
    texts = dict(zip(need, ray.get([row_refs[b] for b in need])))
    ins, res = ([texts[b].column(c).take(touched[block == b] - starts[b]).combine_chunks() for b in need]
                for c in ("instruction", "response"))
    fields = tokenize(pa.concat_arrays(ins), pa.concat_arrays(res))
    for k, (a, b) in enumerate(zip(np.searchsorted(touched, earlier).tolist(), np.searchsorted(touched, later).tolist())):
        score[k], answers[k] = step.score(*fields.pair(a), *fields.pair(b))
    hits = np.flatnonzero([step.confirms(s, a) for s, a in zip(score.tolist(), answers.tolist())])
    return code[hits], score[hits], answers[hits], len(code), _here()


def _write(rows: Rows, verdict: Verdict, plan: Plan, sink):
    return outcome(rows, verdict, plan, sink), _here()


class _Scratch:
    """Where the parts go: `cluster.storage` (every node reads them there) or a folder on the driver's machine (tasks
    on its node read them); removed on leaving."""

    def __init__(self, storage: str | None):
        import fsspec

        if storage:
            self.fs, self.root = fsspec.core.url_to_fs(f"{storage.rstrip('/')}/llamaduo-curate-{uuid.uuid4().hex}")
            self.fs.makedirs(self.root, exist_ok=True)
        else:
            self.fs, self.root = fsspec.filesystem("file"), tempfile.mkdtemp(prefix="llamaduo-curate-")
        self.local = not storage

    def write(self, k: int, table: pa.Table) -> str:
        path = f"{self.root}/part-{k:05d}.parquet"
        with self.fs.open(path, "wb") as f:
            pq.write_table(table, f)
        return path

    def close(self) -> None:
        self.fs.rm(self.root, recursive=True)


def _tally(nodes: list[str]) -> dict[str, int]:
    return dict(sorted(Counter(nodes).items()))


class RayExecutor:
    """Runs a plan on the Ray cluster of `cluster` (ClusterParams), joined on entering and left on leaving."""

    def __init__(self, cluster, stats: dict | None = None):
        self.cluster = cluster
        self.stats = {} if stats is None else stats
        self._exit = contextlib.ExitStack()

    def __enter__(self):
        from llamaduo.cluster.ray import connect

        self.ray = self._exit.enter_context(connect(self.cluster))
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # tasks that read or write this machine's files run on the driver's own node
        self.here = NodeAffinitySchedulingStrategy(self.ray.get_runtime_context().get_node_id(), soft=False)
        return self

    def __exit__(self, *exc):
        return self._exit.__exit__(*exc)

    def decide(self, rows: Rows, plan: Plan) -> Verdict:
        ray, p, stats = self.ray, plan.p, self.stats
        train = plan.train_batch()
        n_train, n = len(train), rows.n
        codes, notes, leaks = np.zeros(n, dtype=np.uint8), Notes(p.report_examples), {}
        if n == 0:
            return Verdict(codes, notes, leaks)
        cpus = max(int(ray.cluster_resources().get("CPU", 1)), 1)
        blocks = min(max(2 * cpus, -(-n // self.cluster.block_rows)), n)  # at least two per CPU: every node gets work
        plan_ref = ray.put(plan)
        scratch = _Scratch(self.cluster.storage)
        try:
            t0 = time.perf_counter()
            # block 0 is train (the driver's: small), then the synthetic rows in order
            row_refs, sig_refs, starts = [ray.put(train.rows)], [ray.put(train.sig)], [0]
            read = ray.remote(_read_part).options(scheduling_strategy=self.here if scratch.local else "DEFAULT")
            steps = ray.remote(_row_steps).options(num_returns=2)
            found = []
            for k, (start, table, _) in enumerate(rows.batches(-(-n // blocks), ROW_COLUMNS)):
                row_refs.append(read.remote(scratch.fs, scratch.write(k, table)))
                starts.append(n_train + start)
                f_ref, s_ref = steps.remote(row_refs[-1], starts[-1], plan_ref)
                found.append(f_ref)
                sig_refs.append(s_ref)

            # the exact step, here, over each block's findings in order
            exact, map_nodes, peak = ExactDuplicates(train.key, notes), {}, []
            for k in range(len(found)):
                # each result let go once read: the object store reuses its memory (this process has mapped it)
                (batch, node, rss), found[k] = ray.get(found[k]), None
                next(exact.run([batch]))
                first = batch.start - n_train
                codes[first:first + len(batch)] = plan.codes.encode(batch.reason)
                leaks.update({first + i: hit for i, hit in batch.leaks.items()})
                map_nodes[node] = map_nodes.get(node, 0) + len(batch)
                peak.append(rss)
            stats["map_s"] = round(time.perf_counter() - t0, 3)
            stats["map_nodes"] = dict(sorted(map_nodes.items()))

            if p.near_dedup:
                t1 = time.perf_counter()
                step = NearDuplicates(p, n_train=n_train, n=n, codes=plan.codes, notes=notes)
                world = min(plan.fingerprint.lsh.bands(), 2 * cpus)
                considered = ray.put(codes == 0)
                bucket = ray.remote(_buckets).options(num_returns=len(found) + 1)
                shares = [bucket.remote(plan_ref, n, rank, world, sig_refs, starts, considered) for rank in range(world)]
                score = ray.remote(_score)
                scored = [score.remote(plan_ref, n, row_refs, starts, *(share[b] for share in shares)) for b in range(len(found))]
                # what the tasks read is theirs now (they borrow it): nothing of it is held here any more
                group, shares, sig_refs, row_refs = [share[-1] for share in shares], None, None, None
                # the walk, here, block by block in order
                close = 0
                confirm_nodes = []
                for b in range(len(scored)):
                    (code, score_, answers, pairs, (node, rss)), scored[b] = ray.get(scored[b]), None
                    next(step.run([Pairs.scored(code, step.n_rows, score_, answers)]))
                    close += pairs
                    confirm_nodes.append(node)
                    peak.append(rss)
                group = ray.get(group)
                codes = np.where(step.reason > 0, step.reason, codes)
                stats["group_nodes"] = _tally([node for node, _ in group])
                stats["confirm_nodes"] = _tally(confirm_nodes)
                stats["pairs_close"] = close
                peak += [rss for _, rss in group]
                stats["near_s"] = round(time.perf_counter() - t1, 3)
            stats["worker_peak_rss_mb"] = round(max(peak), 1)
        finally:
            scratch.close()
        return Verdict(codes, notes, leaks)

    def write(self, rows: Rows, verdict: Verdict, plan: Plan, sink) -> dict:
        """The outcome: in a task on the driver's node for rows read from a file (the task reads them and writes the
        sink's files there); here for rows this process holds already."""
        if not isinstance(rows, ParquetRows):
            return outcome(rows, verdict, plan, sink)
        counts, (node, rss) = self.ray.get(self.ray.remote(_write).options(scheduling_strategy=self.here).remote(rows, verdict, plan, sink))
        self.stats["writer_peak_rss_mb"] = round(rss, 1)
        return counts
