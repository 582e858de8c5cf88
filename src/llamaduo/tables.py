"""The one Parquet schema module: the columns of every table the pipeline writes, and atomic I/O.

Stages read and write only through `read` and `write`, so a table on disk always has exactly the
columns declared here, in this order, with these types.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from llamaduo.atomic import replacing

_PAIR = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("task", pa.string(), nullable=False),
    pa.field("instruction", pa.string(), nullable=False),
    pa.field("response", pa.string(), nullable=False),
]

SCHEMAS: dict[str, pa.Schema] = {
    # data/prepared/{train,test}.parquet: coverage rows after the split
    "split": pa.schema(_PAIR + [pa.field("category", pa.string()), pa.field("split", pa.string(), nullable=False)]),
    # data/synthetic/raw.parquet: every parsed pair the service returned, with its lineage
    "synthetic": pa.schema(
        _PAIR
        + [
            pa.field("seed_id", pa.string(), nullable=False),
            pa.field("provider", pa.string(), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("cycle", pa.int32(), nullable=False),
        ]
    ),
    # data/synthetic/dropped.parquet: what curation removed, and why
    "dropped": pa.schema(_PAIR + [pa.field("reason", pa.string(), nullable=False)]),
    # data/eval/responses.parquet: K sampled answers per test prompt
    "responses": pa.schema(
        [
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("task", pa.string(), nullable=False),
            pa.field("sample", pa.int32(), nullable=False),
            pa.field("answer", pa.string(), nullable=False),
            pa.field("tokens", pa.int32(), nullable=False),
            pa.field("finish_reason", pa.string()),
            pa.field("engine", pa.string(), nullable=False),
        ]
    ),
    # data/eval/judgments.parquet: M judgments per answer; failures are rows with ok=false and a reason
    "judgments": pa.schema(
        [
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("task", pa.string(), nullable=False),
            pa.field("sample", pa.int32(), nullable=False),
            pa.field("repeat", pa.int32(), nullable=False),
            pa.field("judge", pa.string(), nullable=False),
            pa.field("judge_model", pa.string(), nullable=False),
            pa.field("prompt_sha", pa.string(), nullable=False),
            pa.field("ok", pa.bool_(), nullable=False),
            pa.field("precision", pa.float64()),
            pa.field("similarity", pa.float64()),
            pa.field("error", pa.string()),
        ]
    ),
}


def columns(table: str) -> list[str]:
    return SCHEMAS[table].names


def write(path: str | Path, table: str, rows: Iterable[Mapping]) -> int:
    """Write rows as `table`, atomically (temp file + rename), so a crash never leaves half a file."""
    schema = SCHEMAS[table]
    rows = list(rows)
    data = {name: [r.get(name) for r in rows] for name in schema.names}
    for r in rows:
        extra = set(r) - set(schema.names)
        if extra:
            raise ValueError(f"table `{table}` has no column(s) {sorted(extra)}")
    arrow = pa.Table.from_pydict(data, schema=schema)
    with replacing(path) as tmp:
        pq.write_table(arrow, tmp, compression="zstd")
    return len(rows)


def read(path: str | Path, table: str) -> list[dict]:
    """Read a table and check it has the declared columns."""
    arrow = pq.read_table(path)
    want = SCHEMAS[table]
    if arrow.schema.names != want.names:
        raise ValueError(f"{path}: columns {arrow.schema.names} do not match table `{table}` {want.names}")
    return arrow.to_pylist()
