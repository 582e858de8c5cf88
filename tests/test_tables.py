import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llamaduo import tables


def test_roundtrip_keeps_declared_columns(tmp_path):
    rows = [{"id": "a", "task": "t", "instruction": "i", "response": "r", "reason": "exact_duplicate"}]
    tables.write(tmp_path / "d.parquet", "dropped", rows)
    # a pair's optional columns (system prompt, earlier turns) read back as null
    assert tables.read(tmp_path / "d.parquet", "dropped") == [dict(rows[0], system=None, history=None)]
    assert pq.read_schema(tmp_path / "d.parquet").names == tables.columns("dropped")


def test_unknown_column_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"no column\(s\) \['oops'\]"):
        tables.write(tmp_path / "d.parquet", "dropped", [{"id": "a", "task": "t", "instruction": "i", "response": "r",
                                                           "reason": "x", "oops": 1}])
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_missing_required_value_rejected(tmp_path):
    with pytest.raises((pa.ArrowInvalid, ValueError)):
        tables.write(tmp_path / "d.parquet", "dropped", [{"id": "a", "task": "t", "instruction": "i", "response": "r"}])
    assert list(tmp_path.iterdir()) == []


def test_read_checks_schema(tmp_path):
    pq.write_table(pa.table({"x": [1]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="do not match table `responses`"):
        tables.read(tmp_path / "x.parquet", "responses")


def test_empty_table_has_columns(tmp_path):
    tables.write(tmp_path / "e.parquet", "synthetic", [])
    assert tables.read(tmp_path / "e.parquet", "synthetic") == []
    assert pq.read_schema(tmp_path / "e.parquet").names == tables.columns("synthetic")
