"""The steps of one curation, set up once from params, train and test: the quality rules calibrated on train, the
test split indexed, and what the duplicate steps need of train (its rows are in every comparison, first).

Rows are dropped for the first check they fail, in this order: quality rules (quality.py), test contamination
(decontam.py), exact duplicate, near duplicate (duplicates.py). The reasons each step can give make up `Codes`,
one byte per row."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa

from llamaduo.curation.decontam import Decontaminate
from llamaduo.curation.duplicates import ExactDuplicates, Fingerprint, NearDuplicates
from llamaduo.curation.pipeline import ROW_COLUMNS, Batch, Codes, PipelineStep
from llamaduo.curation.quality import QualityFilter


class Plan:
    """What every executor runs: the row steps (`row_steps`, per batch, in any order and anywhere), then the
    duplicate steps over their findings in order (built by the executor: they hold its state)."""

    def __init__(self, p, train: list[dict], test: list[dict]):
        self.p, self.train = p, train
        self.quality = QualityFilter(p, train)
        self.decontaminate = Decontaminate(p, test) if p.decontaminate and test else None
        self.fingerprint = Fingerprint(p)
        self.codes = Codes(QualityFilter.reasons + Decontaminate.reasons + ExactDuplicates.reasons + NearDuplicates.reasons)

    def row_steps(self) -> list[PipelineStep]:
        return [self.quality, *([self.decontaminate] if self.decontaminate else []), self.fingerprint]

    def run(self, data: Iterable[Batch]) -> Iterator[Batch]:
        """The row steps over a stream of batches, chained (each batch passes every step before the next is read)."""
        for step in self.row_steps():
            data = step.run(data)
        return iter(data)

    def train_batch(self) -> Batch:
        """The train rows as a batch at the front of the order, fingerprinted (train rows are never dropped)."""
        rows = pa.table({c: pa.array([r[c] for r in self.train], type=pa.string()) for c in ROW_COLUMNS})
        return next(self.fingerprint.run([Batch.of(0, rows)]))
