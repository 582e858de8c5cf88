import json

import pytest

from conftest import no_robots_row, write_jsonl
from llamaduo.coverage import load_task, prepare, split
from llamaduo.errors import CoverageError


def test_split_is_seeded_disjoint_and_by_ratio(coverage_dir):
    tr, te = prepare(coverage_dir=str(coverage_dir), tasks=["summarize"], train_ratio=0.75, seed=1, max_rows_per_task=None)
    assert (len(tr), len(te)) == (15, 5)
    assert not {r["id"] for r in tr} & {r["id"] for r in te}
    tr2, te2 = prepare(coverage_dir=str(coverage_dir), tasks=["summarize"], train_ratio=0.75, seed=1, max_rows_per_task=None)
    assert [r["id"] for r in te] == [r["id"] for r in te2]
    _, te3 = prepare(coverage_dir=str(coverage_dir), tasks=["summarize"], train_ratio=0.75, seed=2, max_rows_per_task=None)
    assert [r["id"] for r in te] != [r["id"] for r in te3]


def test_split_ignores_file_order(coverage_dir):
    rows = load_task(coverage_dir, "summarize")
    a = split(rows, train_ratio=0.5, seed=3)
    b = split(list(reversed(rows)), train_ratio=0.5, seed=3)
    assert [r["id"] for r in a[1]] == [r["id"] for r in b[1]]


def test_both_splits_nonempty_even_at_extremes(coverage_dir):
    rows = load_task(coverage_dir, "summarize")[:2]
    for ratio in (0.01, 0.99):
        tr, te = split(rows, train_ratio=ratio, seed=0)
        assert len(tr) == 1 and len(te) == 1


def test_cap_rows(coverage_dir):
    tr, te = prepare(coverage_dir=str(coverage_dir), tasks=["summarize"], train_ratio=0.5, seed=0, max_rows_per_task=6)
    assert len(tr) + len(te) == 6


def test_plain_prompt_response_rows(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"prompt": "p1 long enough", "response": "r1"}, {"prompt": "p2 long enough", "response": "r2"}])
    rows = load_task(tmp_path, "t")
    assert rows[0]["instruction"] == "p1 long enough" and rows[0]["response"] == "r1" and rows[0]["task"] == "t"


def test_missing_column_names_file_and_line(tmp_path):
    rows = [no_robots_row(0), {"prompt": "only a prompt"}]
    write_jsonl(tmp_path / "summarize.jsonl", rows)
    with pytest.raises(CoverageError, match=r"summarize.jsonl:2: missing column\(s\) \['response'\]"):
        load_task(tmp_path, "summarize")


def test_empty_task(tmp_path):
    (tmp_path / "summarize.jsonl").write_text("")
    with pytest.raises(CoverageError, match="has 0 row"):
        load_task(tmp_path, "summarize")


def test_missing_task_lists_available(coverage_dir):
    with pytest.raises(CoverageError, match=r"'coding'.*tasks here: \['summarize'\]"):
        load_task(coverage_dir, "coding")


@pytest.mark.parametrize("line,msg", [
    ("{not json", "not valid JSON"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}]}), "exactly one user and one assistant"),
    (json.dumps({"prompt": "x", "response": "  "}), "response is empty"),
    (json.dumps([1, 2]), "expected a JSON object"),
])
def test_broken_rows(tmp_path, line, msg):
    (tmp_path / "summarize.jsonl").write_text(json.dumps(no_robots_row(1)) + "\n" + line + "\n")
    with pytest.raises(CoverageError, match=msg):
        load_task(tmp_path, "summarize")


def test_duplicate_id(tmp_path):
    write_jsonl(tmp_path / "summarize.jsonl", [no_robots_row(1), no_robots_row(1)])
    with pytest.raises(CoverageError, match="duplicate id"):
        load_task(tmp_path, "summarize")


def test_shipped_coverage_files_load():
    from conftest import ROOT

    counts = {t: len(load_task(ROOT / "data/coverage", t)) for t in ("summarize", "classify", "coding", "closed_qa")}
    assert counts == {"summarize": 395, "classify": 334, "coding": 334, "closed_qa": 245}
