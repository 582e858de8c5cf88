"""The contract every curation step keeps, in datatrove's shape (huggingface/datatrove, `pipeline/base.py`): a step is
`run(data, rank, world_size)` over a stream and yields a stream, `rank` of `world_size` naming the share of the work
one call does where a step's work splits (the LSH's bands); a filter says, per row, keep or drop and why.

Rows move in batches (`Batch`: consecutive rows of the fixed order, as Arrow columns), so a row step holds one batch
at a time. Every row has one place in that order: the train rows first, then the synthetic rows sorted by cycle (a
row's position breaks ties). A filter looks only at the rows still kept, so a row's reason is the first check it
fails. The steps that decide by order (a duplicate set keeps its first row) hold the state that decision needs, a
few bytes per row, never the rows. The executors run these same steps: `local.py` in this process, `distributed.py`
as Ray tasks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from llamaduo.curation.tokens import Tokens, tokenize

# the columns the row steps read
ROW_COLUMNS = ("instruction", "response", "task")


@dataclass
class Batch:
    """Consecutive rows; `start` is the first one's place in the order (train rows first).

    `reason`: each row's drop reason so far (None: kept). The steps add what they find: `leaks` (row in the batch ->
    (method, test row id)), `key` (the exact-duplicate key per row), `sig` (the MinHash signature per row). `rows` is
    None where only the findings travel (an executor's driver gets those, not the rows)."""

    start: int
    rows: pa.Table | None
    reason: np.ndarray
    leaks: dict[int, tuple[str, str]] = field(default_factory=dict)
    key: np.ndarray | None = None
    sig: np.ndarray | None = None
    _tokens: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, start: int, rows: pa.Table) -> Batch:
        return cls(start, rows, np.full(len(rows), None, dtype=object))

    def __len__(self) -> int:
        return len(self.reason)

    def kept(self) -> np.ndarray:
        return self.reason == None  # noqa: E711 (elementwise on an object array)

    def column(self, name: str) -> pa.Array:
        return self.rows.column(name).combine_chunks()

    def fields(self) -> Tokens:
        """The rows' tokens, instruction and response of row i at 2i and 2i+1 (tokenized once per batch)."""
        if "fields" not in self._tokens:
            self._tokens["fields"] = tokenize(self.column("instruction"), self.column("response"))
        return self._tokens["fields"]

    def shingles(self, k: int) -> Tokens:
        """Each field's word shingles of k tokens (a shorter field: one of all its tokens)."""
        if ("shingles", k) not in self._tokens:
            self._tokens[("shingles", k)] = self.fields().windows(k, short=True)
        return self._tokens[("shingles", k)]

    def findings(self) -> Batch:
        """What the driver needs back from a worker: the reasons, leaks and keys (not the rows, tokens or signatures)."""
        return Batch(self.start, None, self.reason, self.leaks, self.key)


class PipelineStep:
    """One step. `run` takes a stream and yields one; what flows is the step's to declare (its docstring)."""

    name = "step"

    def run(self, data: Iterable, rank: int = 0, world_size: int = 1) -> Iterator:
        raise NotImplementedError


class RowFilter(PipelineStep):
    """A check of each row on its own: `filter(batch)` gives each row's drop reason (None keeps it). A row's verdict
    depends on that row alone, so batches are filtered anywhere, in any order. `reasons`: all it can say."""

    reasons: tuple[str, ...] = ()

    def filter(self, batch: Batch) -> np.ndarray:
        raise NotImplementedError

    def run(self, data: Iterable[Batch], rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Batches in, the same batches out, each row still kept that fails the check now dropped with its reason."""
        for batch in data:
            if len(batch):
                found = self.filter(batch)
                now = batch.kept() & (found != None)  # noqa: E711
                batch.reason[now] = found[now]
            yield batch


class Codes:
    """A row's drop reason in one byte (0: kept), over the reasons the steps declare, in their order."""

    def __init__(self, reasons: Iterable[str]):
        self.names: tuple[str | None, ...] = (None, *dict.fromkeys(reasons))
        if len(self.names) > 255:
            raise ValueError("more than 255 drop reasons do not fit a byte")
        self._code = {name: k for k, name in enumerate(self.names)}

    def code(self, reason: str | None) -> int:
        return self._code[reason]

    def encode(self, reasons: np.ndarray) -> np.ndarray:
        return np.fromiter((self._code[r] for r in reasons.tolist()), dtype=np.uint8, count=len(reasons))

    def name(self, code: int) -> str | None:
        return self.names[code]


class Notes:
    """What a dropped row matched, kept for the report's examples only: the first `limit` rows of each reason. A note
    is its text and, where it names another row, that row's place (its id is looked up when the rows are read again:
    the rows are not kept). Rows must come in order within each reason, as the steps decide them."""

    def __init__(self, limit: int):
        self.limit = limit
        self.taken: dict[str, int] = {}
        self.text: dict[int, tuple[str, int | None]] = {}

    def add(self, reason: str, row: int, text: str, names: int | None = None) -> None:
        if self.taken.get(reason, 0) < self.limit:
            self.taken[reason] = self.taken.get(reason, 0) + 1
            self.text[row] = (text, names)

    def named(self) -> set[int]:
        """The rows whose ids the notes need."""
        return {m for _, m in self.text.values() if m is not None}


@dataclass
class Verdict:
    """What the steps decided for the synthetic rows: `codes` (a byte per row, in the order, `Codes`), the notes for
    the report's examples, and each test leak (place -> (method, test row id))."""

    codes: np.ndarray
    notes: Notes
    leaks: dict[int, tuple[str, str]]
