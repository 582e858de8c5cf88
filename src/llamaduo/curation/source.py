"""The synthetic rows in curation's order, read in batches, and where the curated rows go.

The order is fixed: by cycle, a row's position breaking ties (earlier cycles win a duplicate set). A Parquet table
is streamed, never read whole: its `cycle` column first (4 bytes a row), then the rows a batch at a time, in one
pass when the file is already in cycle order (synthesis writes it so) and one pass per cycle otherwise.

`ParquetSink` writes the curated and dropped tables exactly as `tables.write` writes them (the same bytes, so DVC's
hash of an unchanged result does not change) while the rows arrive in batches: Parquet's writer cuts pages every
1,024 rows of each column chunk it is given, so rows gathered into chunks of a multiple of that write the same
pages as one contiguous table would (tests/curation/test_source.py compares the bytes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from llamaduo import tables
from llamaduo.atomic import replacing

# rows per chunk of a table being written: a multiple of Parquet's write batch (1,024 rows), and a divisor of the
# default row group (1,048,576 rows), so chunk and row group boundaries fall where a whole table's would
CHUNK_ROWS = 16 * 1024
# Parquet is read a page at a time through 1 MiB buffers, by this thread: measured on a 256k-row file of one row group,
# the default (pre-buffered whole column chunks, decoded by a thread pool) held ~200 MB more while streaming it
READ = {"buffer_size": 1 << 20, "pre_buffer": False}


class Rows:
    """The synthetic rows in curation's order. `batches(size, columns)` yields (first row's place, Arrow table of
    those columns, the rows as dicts where they came as dicts, else None)."""

    n: int

    def batches(self, size: int, columns: Sequence[str] | None = None) -> Iterator[tuple[int, pa.Table, list | None]]:
        raise NotImplementedError


class ListRows(Rows):
    """Rows given as dicts (every key passes through to the kept and dropped rows)."""

    def __init__(self, raw: list[dict]):
        order = sorted(range(len(raw)), key=lambda i: raw[i]["cycle"])  # stable: position breaks ties
        self.rows = [raw[i] for i in order]
        self.n = len(raw)

    def batches(self, size, columns=None):
        columns = list(columns or tables.columns("synthetic"))
        for start in range(0, self.n, size):
            part = self.rows[start:start + size]
            yield start, pa.table({c: [r.get(c) for r in part] for c in columns}), part


class ParquetRows(Rows):
    """Rows of a Parquet table of `kind` (a `tables` schema), streamed."""

    def __init__(self, path: str | Path, kind: str = "synthetic"):
        self.path = str(Path(path).resolve())  # absolute: an executor's task on this machine may read it too
        meta = pq.ParquetFile(self.path)
        names = meta.schema_arrow.names
        if names != tables.columns(kind):
            raise ValueError(f"{path}: columns {names} do not match table `{kind}` {tables.columns(kind)}")
        self.n = meta.metadata.num_rows
        cycle = pq.read_table(self.path, columns=["cycle"]).column("cycle").to_numpy()
        self.cycles = np.unique(cycle).tolist()
        self.in_order = bool(np.all(cycle[1:] >= cycle[:-1]))

    def _stream(self, size, columns) -> Iterator[pa.RecordBatch]:
        if self.in_order:
            yield from pq.ParquetFile(self.path, **READ).iter_batches(size, columns=columns, use_threads=False)
            return
        read = list(dict.fromkeys([*columns, "cycle"]))
        for c in self.cycles:
            for b in pq.ParquetFile(self.path, **READ).iter_batches(size, columns=read, use_threads=False):
                yield b.filter(pc.equal(b.column("cycle"), c)).select(columns)

    def batches(self, size, columns=None):
        columns = list(columns or tables.columns("synthetic"))
        start, pending, have = 0, [], 0
        for b in self._stream(size, columns):
            pending.append(pa.Table.from_batches([b]))
            have += b.num_rows
            while have >= size:  # batches of exactly `size` rows (the last one shorter)
                table = pa.concat_tables(pending).combine_chunks()
                yield start, table.slice(0, size), None
                start, pending, have = start + size, [table.slice(size)], have - size
        if have:
            yield start, pa.concat_tables(pending).combine_chunks(), None


class ListSink:
    """The curated rows as dicts: the kept ones as they came, the dropped ones with their `reason`."""

    columns = ("id", "task", "instruction", "response", "cycle")

    def __init__(self):
        self.kept: list[dict] = []
        self.dropped: list[dict] = []

    def add(self, table: pa.Table, dicts: list | None, keep: np.ndarray, reasons: list[str | None]) -> None:
        for r, why in zip(dicts, reasons):
            if why is None:
                self.kept.append(r)
            else:  # every column passes through (lineage, and any a table gains later); the reason is added
                self.dropped.append(dict(r, reason=why))

    def close(self) -> None:
        pass


class _Chunks:
    """Rows of one table gathered into chunks of CHUNK_ROWS (see the module docstring)."""

    def __init__(self, schema: pa.Schema):
        self.schema, self.done, self.pending, self.count = schema, [], [], 0

    def add(self, table: pa.Table) -> None:
        while len(table):
            take = min(CHUNK_ROWS - self.count, len(table))
            self.pending.append(table.slice(0, take))
            self.count, table = self.count + take, table.slice(take)
            if self.count == CHUNK_ROWS:
                self.done.append(pa.concat_tables(self.pending).combine_chunks())
                self.pending, self.count = [], 0

    def table(self) -> pa.Table:
        parts = self.done + ([pa.concat_tables(self.pending).combine_chunks()] if self.pending else [])
        return pa.Table.from_batches([b for t in parts for b in t.to_batches()], schema=self.schema)


class ParquetSink:
    """The kept rows to `out` (table `synthetic`), the dropped ones to `dropped_out` (table `dropped`: the pair and
    its reason), as `tables.write` writes them; both are written when the last row has come (`close`)."""

    columns = tuple(tables.columns("synthetic"))

    def __init__(self, out: str | Path, dropped_out: str | Path):
        self.paths = {"synthetic": Path(out).resolve(), "dropped": Path(dropped_out).resolve()}
        self.chunks = {kind: _Chunks(tables.SCHEMAS[kind]) for kind in self.paths}

    def add(self, table: pa.Table, dicts: list | None, keep: np.ndarray, reasons: list[str | None]) -> None:
        self.chunks["synthetic"].add(table.filter(keep).select(tables.columns("synthetic")).cast(tables.SCHEMAS["synthetic"]))
        gone = table.filter(~keep).select(tables.columns("dropped")[:-1])
        gone = gone.append_column("reason", pa.array([r for r in reasons if r is not None], pa.string()))
        self.chunks["dropped"].add(gone.cast(tables.SCHEMAS["dropped"]))

    def close(self) -> None:
        for kind, path in self.paths.items():
            with replacing(path) as tmp:
                pq.write_table(self.chunks[kind].table(), tmp, compression="zstd")
