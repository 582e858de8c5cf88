"""The streamed file path: rows read in curation's order from a file in any order, and tables written batch by batch
with the very bytes `tables.write` gives (DVC hashes the file: an unchanged result must keep its hash)."""

import hashlib
import random

import numpy as np
import pyarrow as pa
import pytest

from llamaduo import tables
from llamaduo.config import CurateParams
from llamaduo.curation import curate, curate_parquet
from llamaduo.curation.source import CHUNK_ROWS, ParquetRows, ParquetSink

WORDS = "river mountain engine garden letter window market doctor planet castle violin pepper silver harbor".split()


def rows(n, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text, answer = (" ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 30))) for _ in range(2))
        out.append({"id": f"r{i}", "task": rng.choice(["summarize", "coding"]), "instruction": f"Write about {text}",
                    "response": answer.upper() if i % 7 else "", "system": "Be brief." if i % 3 == 0 else None,
                    "history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": text}] if i % 5 == 0 else None,
                    "seed_id": f"s{i % 11}", "provider": "p", "model": "m", "request_id": f"q{i // 4}", "cycle": rng.randrange(3)})
    return out


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("n", [0, 5, CHUNK_ROWS + 3000])
def test_the_sink_writes_what_tables_write_writes(tmp_path, n):
    data = rows(n)
    keep = [i % 4 != 1 for i in range(n)]
    reasons = [None if k else "refusal" for k in keep]
    sink = ParquetSink(tmp_path / "kept.parquet", tmp_path / "dropped.parquet")
    for start in range(0, n, 2500):  # batches that do not line up with the sink's chunks
        part = data[start:start + 2500]
        table = pa.Table.from_pylist(part, schema=tables.SCHEMAS["synthetic"])
        sink.add(table, None, np.array(keep[start:start + 2500]), reasons[start:start + 2500])
    sink.close()
    tables.write(tmp_path / "kept_ref.parquet", "synthetic", [r for r, k in zip(data, keep) if k])
    tables.write(tmp_path / "dropped_ref.parquet", "dropped",
                 [{c: r.get(c) for c in tables.columns("dropped")[:-1]} | {"reason": "refusal"} for r, k in zip(data, keep) if not k])
    assert md5(tmp_path / "kept.parquet") == md5(tmp_path / "kept_ref.parquet")
    assert md5(tmp_path / "dropped.parquet") == md5(tmp_path / "dropped_ref.parquet")


def test_a_file_out_of_cycle_order_is_read_in_order_in_batches_of_the_size_asked(tmp_path):
    data = rows(1000, seed=1)
    tables.write(tmp_path / "raw.parquet", "synthetic", data)
    source = ParquetRows(tmp_path / "raw.parquet")
    assert not source.in_order and source.n == 1000
    got = list(source.batches(128, ["id", "cycle"]))
    assert [len(t) for _, t, _ in got] == [128] * 7 + [104] and [s for s, _, _ in got] == list(range(0, 1000, 128))
    ids = [i for _, t, _ in got for i in t.column("id").to_pylist()]
    assert ids == [r["id"] for r in sorted(data, key=lambda r: r["cycle"])]  # by cycle, position breaking ties


def test_a_file_with_other_columns_names_them(tmp_path):
    tables.write(tmp_path / "split.parquet", "split", [])
    with pytest.raises(ValueError, match=r"split\.parquet: columns .* do not match table `synthetic`"):
        ParquetRows(tmp_path / "split.parquet")


def test_the_file_path_gives_what_the_list_path_gives(tmp_path):
    """Duplicates across cycles in a file out of cycle order: the streamed stage path and the in-memory path agree
    on every byte and every count."""
    data = rows(600, seed=2)
    data += [dict(data[k], id=f"copy{k}", cycle=0) for k in range(0, 600, 50)]  # exact copies, some earlier
    train = [{"id": "t1", "task": "summarize", "instruction": data[3]["instruction"], "response": data[3]["response"]}]
    test = [{"id": "e1", "task": "coding", "instruction": data[8]["instruction"], "response": "x"}]
    p = CurateParams(min_stopword_ratio=None)
    kept, dropped, counts = curate(data, train=train, test=test, p=p)
    assert {"exact_duplicate", "exact_duplicate_train", "test_contamination_exact"} <= set(counts["dropped"])
    tables.write(tmp_path / "raw.parquet", "synthetic", data)
    got = curate_parquet(tmp_path / "raw.parquet", out=tmp_path / "kept.parquet", dropped_out=tmp_path / "dropped.parquet",
                         train=train, test=test, p=p)
    assert got == counts
    tables.write(tmp_path / "kept_ref.parquet", "synthetic", kept)
    tables.write(tmp_path / "dropped_ref.parquet", "dropped", [{c: d.get(c) for c in tables.columns("dropped")} for d in dropped])
    assert md5(tmp_path / "kept.parquet") == md5(tmp_path / "kept_ref.parquet")
    assert md5(tmp_path / "dropped.parquet") == md5(tmp_path / "dropped_ref.parquet")
