"""The local executor: the steps in this process, streaming. The rows are read a batch at a time through the row
steps and the exact step; what the near-duplicate step needs of each row still kept stays behind: its MinHash
signature (512 bytes) in memory, its tokens in a scratch file. The LSH then searches every band here, and the walk
scores a pair only when it reads it (a pair whose later row is already dropped is never scored).

Memory at 256k rows (bench/results/curate.json): one batch of rows and tokens, the signatures, the exact keys; the
rows themselves are read again for the outcome.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from llamaduo.curation.duplicates import ExactDuplicates, NearDuplicates, Pairs
from llamaduo.curation.outcome import outcome
from llamaduo.curation.pipeline import ROW_COLUMNS, Batch, Notes, Verdict
from llamaduo.curation.source import Rows
from llamaduo.curation.steps import Plan
from llamaduo.curation.tokens import Tokens

# rows per batch through the row steps: large enough that the compiled kernels run long, small enough that a
# batch's tokens and shingles (~6 KB a row) stay small next to the signatures
BATCH_ROWS = 4096


class TokenFile:
    """Rows' instruction and response tokens in a scratch file, read back row by row: the walk needs any earlier
    row's tokens, and all of them take ~1.8 KB a row, more than the rows themselves. Reads are `pread`s: the file's
    pages are the page cache's, not this process's memory. Rows are added in ascending place."""

    def __init__(self):
        self.file = tempfile.TemporaryFile(prefix="llamaduo-tokens-")
        self.places: list[np.ndarray] = []
        self.starts: list[np.ndarray] = []  # per row: first token, first response token (in tokens from the file's start)
        self.size = 0

    def add(self, places: np.ndarray, fields: Tokens, rows: np.ndarray) -> None:
        """Rows `rows` (ascending) of a batch whose tokens are `fields` (a `tokenize(instructions, responses)`), at
        places `places`."""
        pairs = fields.pairs()
        take = np.zeros(len(pairs), dtype=bool)
        take[rows] = True
        self.file.write(pairs.hashes[pairs.offsets[0]:pairs.offsets[-1]][np.repeat(take, pairs.counts)].tobytes())
        lengths = pairs.counts[rows]
        first = self.size + np.cumsum(lengths) - lengths
        split = fields.offsets[2 * rows + 1] - fields.offsets[2 * rows]
        self.starts.append(np.stack([first, first + split, first + lengths], axis=1))
        self.places.append(places)
        self.size += int(lengths.sum())

    def seal(self) -> None:
        self.file.flush()
        self.places, self.starts = np.concatenate(self.places), np.concatenate(self.starts)

    def row(self, place: int) -> tuple[np.ndarray, int]:
        """(the row's tokens, where its response starts)."""
        begin, split, end = self.starts[np.searchsorted(self.places, place)].tolist()
        data = os.pread(self.file.fileno(), 8 * (end - begin), 8 * begin)
        return np.frombuffer(data, dtype=np.uint64), split - begin

    def close(self) -> None:
        self.file.close()


class LocalExecutor:
    """Runs a plan in this process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, rows: Rows, verdict: Verdict, plan: Plan, sink) -> dict:
        return outcome(rows, verdict, plan, sink)

    def decide(self, rows: Rows, plan: Plan) -> Verdict:
        p, train = plan.p, plan.train_batch()
        n_train, n = len(train), rows.n
        codes, notes, leaks = np.zeros(n, dtype=np.uint8), Notes(p.report_examples), {}
        exact = ExactDuplicates(train.key, notes)
        near = p.near_dedup and n > 0
        if near:  # the near step's input: every train row and each synthetic row still kept, in order
            sig = np.empty((n_train + n, p.num_perm), dtype=np.uint32)
            places = np.empty(n_train + n, dtype=np.int64)
            sig[:n_train], places[:n_train], m = train.sig, np.arange(n_train), n_train
            tokens = TokenFile()
            tokens.add(places[:n_train], train.fields(), np.arange(n_train))
        data = (Batch.of(n_train + start, table) for start, table, _ in rows.batches(BATCH_ROWS, ROW_COLUMNS))
        for batch in exact.run(plan.run(data)):
            first = batch.start - n_train
            codes[first:first + len(batch)] = plan.codes.encode(batch.reason)
            leaks.update({first + i: found for i, found in batch.leaks.items()})
            if near:
                keep = np.flatnonzero(batch.kept())
                sig[m:m + len(keep)], places[m:m + len(keep)] = batch.sig[keep], batch.start + keep
                tokens.add(places[m:m + len(keep)], batch.fields(), keep)
                m += len(keep)
        if near:
            try:
                tokens.seal()
                step = NearDuplicates(p, n_train=n_train, n=n, codes=plan.codes, notes=notes)
                code = step.buckets(sig[:m], places[:m])
                del sig
                pairs = Pairs(code % step.n_rows, code // step.n_rows, None)
                pairs.score = lambda k: step.score(*tokens.row(int(pairs.earlier[k])), *tokens.row(int(pairs.later[k])))
                for _ in step.run([pairs]):
                    pass
                codes = np.where(step.reason > 0, step.reason, codes)
            finally:
                tokens.close()
        return Verdict(codes, notes, leaks)
