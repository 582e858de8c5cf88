import csv
import hashlib
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, no_robots_row, write_jsonl
from llamaduo.coverage import load_task, prepare, split
from llamaduo.coverage.prepare import side_score
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


def _pairs(n, start=0):
    return [{"id": f"row-{i}", "task": "t", "instruction": f"q{i}", "response": f"a{i}", "system": None,
             "history": None, "category": "t"} for i in range(start, start + n)]


def _sides(rows, **kw):
    tr, te = split(rows, **kw)
    return {r["id"]: r["split"] for r in tr + te}


@pytest.mark.parametrize("seed", [0, 42])
def test_adding_rows_never_moves_an_old_row(seed):
    old = _sides(_pairs(300), train_ratio=0.8, seed=seed)
    grown = _sides(_pairs(300) + _pairs(2700, start=300), train_ratio=0.8, seed=seed)
    assert {k: grown[k] for k in old} == old
    # the side of a row is a Bernoulli(0.8) draw by its hash: over 3,000 rows the train share lies within 0.8 +- 0.03
    # (4 standard deviations, sqrt(0.8 * 0.2 / 3000) = 0.0073)
    share = sum(v == "train" for v in grown.values()) / len(grown)
    assert abs(share - 0.8) < 0.03, share


def test_a_row_borrowed_to_fill_an_empty_side_goes_back_when_the_side_fills():
    by_hash = {r["id"]: side_score(r["id"], 5) < 0.5 for r in _pairs(40)}
    # three rows that the hash puts all in train at ratio 0.5, then one more the hash puts in test
    train_ids = [k for k, v in by_hash.items() if v][:3]
    test_id = next(k for k, v in by_hash.items() if not v)
    rows = [dict(_pairs(1)[0], id=k) for k in train_ids]
    tr, te = split(rows, train_ratio=0.5, seed=5)
    assert len(te) == 1 and te[0]["id"] == max(train_ids, key=lambda k: side_score(k, 5))
    tr, te = split(rows + [dict(rows[0], id=test_id)], train_ratio=0.5, seed=5)
    assert [r["id"] for r in te] == [test_id] and sorted(r["id"] for r in tr) == sorted(train_ids)


def test_the_cap_keeps_old_rows_on_their_side():
    full = _sides(_pairs(50), train_ratio=0.7, seed=3)
    capped = _sides(_pairs(50), train_ratio=0.7, seed=3, max_rows=20)
    assert len(capped) == 20 and all(full[k] == v for k, v in capped.items())


def test_the_shipped_split_of_summarize():
    # the split of the shipped data at params.yaml's phi and seed (the prepare stage's counts in dvc.lock follow)
    rows = load_task(ROOT / "data/coverage", "summarize")
    tr, te = split(rows, train_ratio=0.96, seed=42)
    assert (len(tr), len(te)) == (380, 15)


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
    (json.dumps({"messages": [{"role": "user", "content": "x"}]}), "needs at least a user turn and an assistant turn"),
    (json.dumps({"prompt": "x", "response": "  "}), "`response` is empty"),
    (json.dumps([1, 2]), "expected a JSON object"),
])
def test_broken_rows(tmp_path, line, msg):
    (tmp_path / "summarize.jsonl").write_text(json.dumps(no_robots_row(1)) + "\n" + line + "\n")
    with pytest.raises(CoverageError, match=r"summarize.jsonl:2: .*" + re.escape(msg)):
        load_task(tmp_path, "summarize")


def test_duplicate_id(tmp_path):
    write_jsonl(tmp_path / "summarize.jsonl", [no_robots_row(1), no_robots_row(1)])
    with pytest.raises(CoverageError, match=r"summarize.jsonl:2: duplicate id 'summarize-0001' \(first at .*summarize.jsonl:1\)"):
        load_task(tmp_path, "summarize")


def test_shipped_coverage_files_load():
    from conftest import ROOT

    counts = {t: len(load_task(ROOT / "data/coverage", t)) for t in ("summarize", "classify", "coding", "closed_qa")}
    assert counts == {"summarize": 395, "classify": 334, "coding": 334, "closed_qa": 245}


# ---- the formats: a system prompt and earlier turns kept, in JSONL (OpenAI chat, columns), CSV and Parquet -----

SYSTEM = "You are a terse pirate. Answer in one line."
HISTORY = [{"role": "user", "content": "Hi, who are you?"}, {"role": "assistant", "content": "A pirate, matey."},
           {"role": "user", "content": "Where do you sail?"}, {"role": "assistant", "content": "The seven seas."}]


def chat_row(i: int) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM}, *HISTORY,
                         {"role": "user", "content": f"Name ship number {i}."},
                         {"role": "assistant", "content": f"The Black Gull {i}."}]}


def check_row(row: dict, i: int, task: str = "chat") -> None:
    assert row["instruction"] == f"Name ship number {i}." and row["response"] == f"The Black Gull {i}."
    assert row["system"] == SYSTEM and row["history"] == HISTORY and row["task"] == task and row["category"] == task


def test_openai_chat_rows_keep_the_system_prompt_and_earlier_turns(tmp_path):
    write_jsonl(tmp_path / "chat.jsonl", [chat_row(0), chat_row(1)])
    rows = load_task(tmp_path, "chat")
    check_row(rows[0], 0)
    # the content hash covers the context: the same instruction under another system prompt is another row
    other = chat_row(0)
    other["messages"][0]["content"] = "You are a librarian."
    write_jsonl(tmp_path / "chat.jsonl", [chat_row(0), other])
    a, b = load_task(tmp_path, "chat")
    assert a["id"] != b["id"] and a["instruction"] == b["instruction"]


def test_single_turn_rows_have_no_context_and_keep_their_old_ids(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"prompt": "p1 long enough", "response": "r1"},
                                       {"prompt": "p2", "response": "r2", "system": "Be brief."}])
    a, b = load_task(tmp_path, "t")
    assert (a["system"], a["history"], b["system"], b["history"]) == (None, None, "Be brief.", None)
    # ids of single-turn rows without a system prompt are the instruction's hash, as before the context existed
    assert a["id"] == hashlib.sha256(b"p1 long enough").hexdigest()


def test_columns_with_history_in_jsonl_csv_and_parquet_give_the_same_rows(tmp_path):
    cols = [{"prompt": f"Name ship number {i}.", "response": f"The Black Gull {i}.", "system": SYSTEM, "history": HISTORY}
            for i in range(2)]
    write_jsonl(tmp_path / "j" / "chat.jsonl", cols)
    (tmp_path / "c").mkdir()
    header = "prompt,response,system,history\n"
    # a quoted field may span lines; history is a JSON string in CSV
    body = "".join(f'"Name ship number {i}.","The Black Gull {i}.","{SYSTEM}","{json.dumps(HISTORY).replace(chr(34), chr(34) * 2)}"\n'
                   for i in range(2))
    (tmp_path / "c" / "chat.csv").write_text(header + body, encoding="utf-8")
    (tmp_path / "p").mkdir()
    pq.write_table(pa.Table.from_pylist(cols), tmp_path / "p" / "chat.parquet")  # history as list<struct>
    (tmp_path / "s").mkdir()
    pq.write_table(pa.Table.from_pylist([dict(c, history=json.dumps(HISTORY)) for c in cols]), tmp_path / "s" / "chat.parquet")
    loaded = {d: load_task(tmp_path / d, "chat") for d in ("j", "c", "p", "s")}
    for rows in loaded.values():
        check_row(rows[0], 0)
        check_row(rows[1], 1)
    assert loaded["j"] == loaded["c"] == loaded["p"] == loaded["s"]
    assert load_task(tmp_path / "j", "chat") == load_task(tmp_path / "j", "chat")
    write_jsonl(tmp_path / "j" / "chat2.jsonl", [chat_row(0), chat_row(1)])
    assert [r["id"] for r in load_task(tmp_path / "j", "chat2")] == [r["id"] for r in loaded["j"]]


def test_csv_errors_name_the_line_where_the_record_starts(tmp_path):
    (tmp_path / "t.csv").write_text('prompt,response,category\n"a\nb",ok,x\nq,r,y\nq2,,z\n')
    with pytest.raises(CoverageError, match=r"t.csv:5: missing column\(s\) \['response'\]"):  # an empty cell is missing
        load_task(tmp_path, "t")
    (tmp_path / "t.csv").write_text('prompt,response,history\np,r,"[{""role"": ""user""}"\n')
    with pytest.raises(CoverageError, match=r"t.csv:2: `history` is not valid JSON"):
        load_task(tmp_path, "t")
    (tmp_path / "t.csv").write_text("prompt,response,sytem\np,r,s\n")
    with pytest.raises(CoverageError, match=r"t.csv:1: unknown column\(s\) \['sytem'\]"):
        load_task(tmp_path, "t")
    (tmp_path / "t.csv").write_text("prompt,response\np,r,extra\n")
    with pytest.raises(CoverageError, match=r"t.csv:2: 3 fields, the header has 2"):
        load_task(tmp_path, "t")


@pytest.mark.parametrize("ext", ["jsonl", "csv"])
def test_a_non_utf8_byte_names_file_line_and_column(tmp_path, ext):
    good = json.dumps(no_robots_row(1)) if ext == "jsonl" else "prompt,response\np,r"
    bad = json.dumps({"prompt": "caf\udce9", "response": "r"}, ensure_ascii=False) if ext == "jsonl" else "caf\udce9,r"
    (tmp_path / f"t.{ext}").write_bytes((good + "\n" + bad + "\n").encode("utf-8", "surrogateescape"))
    col, line = bad.index("\udce9") + 1, good.count("\n") + 2
    with pytest.raises(CoverageError, match=rf"t.{ext}:{line}: byte 0xe9 at column {col} is not UTF-8"):
        load_task(tmp_path, "t")


@pytest.mark.parametrize("row,msg", [
    ({"prompt": "p", "response": "r", "category": 3}, "`category` must be a string, got int"),
    ({"prompt": "p", "response": "r", "system": ["x"]}, "`system` must be a string, got list"),
    ({"prompt": 5, "response": "r"}, "`prompt` must be a string, got int"),
    ({"prompt": "p", "response": "r", "prompt_id": 1.5}, "`prompt_id` must be a string or an integer, got float"),
    ({"prompt": "p", "response": "r", "history": "hi"}, "`history` must be a list"),
    ({"prompt": "p", "response": "r", "history": HISTORY[:1]}, "`history` must end with an assistant turn"),
    ({"prompt": "p", "response": "r", "history": [HISTORY[1], HISTORY[0]]}, "history[0]: expected a user turn, got role 'assistant'"),
    ({"prompt": "p", "response": "r", "history": [{"role": "user", "content": 7}, HISTORY[1]]},
     "`history[0].content` must be a string, got int"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                   {"role": "assistant", "content": "b"}]}, "messages[1]: a system message is accepted only as the first"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                   {"role": "user", "content": "c"}]}, "the last turn must be the assistant's answer"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]},
     "messages[1]: expected a assistant turn, got role 'tool'"),
    ({"messages": "hi"}, "`messages` must be a list, got str"),
])
def test_wrong_types_and_shapes_name_file_and_line(tmp_path, row, msg):
    write_jsonl(tmp_path / "t.jsonl", [{"prompt": "fine", "response": "ok"}, row])
    with pytest.raises(CoverageError, match=r"t.jsonl:2: .*" + re.escape(msg)):
        load_task(tmp_path, "t")


def test_parquet_errors_name_the_row(tmp_path):
    pq.write_table(pa.table({"prompt": ["a", "b"], "response": ["r", "s"], "category": [1, 2]}), tmp_path / "t.parquet")
    with pytest.raises(CoverageError, match=r"t.parquet: row 1: `category` must be a string, got int"):
        load_task(tmp_path, "t")
    (tmp_path / "t.parquet").write_bytes(b"not parquet")
    with pytest.raises(CoverageError, match=r"t.parquet: not a readable Parquet file"):
        load_task(tmp_path, "t")


def test_ids_repeated_across_tasks_name_both_places(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [no_robots_row(1, "a"), {**no_robots_row(2, "a"), "prompt_id": "shared"}])
    write_jsonl(tmp_path / "b.jsonl", [no_robots_row(1, "b"), {**no_robots_row(3, "b"), "prompt_id": "shared"}])
    assert len(load_task(tmp_path, "b")) == 2  # each task alone is fine
    with pytest.raises(CoverageError, match=r"b.jsonl:2: duplicate id 'shared' \(first at .*a.jsonl:2\)"):
        prepare(coverage_dir=str(tmp_path), tasks=["a", "b"], train_ratio=0.5, seed=0, max_rows_per_task=None)


def test_one_file_per_task(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"prompt": "p", "response": "r"}] * 2)
    (tmp_path / "t.csv").write_text("prompt,response\np,r\n")
    with pytest.raises(CoverageError, match=r"several files .*t.jsonl.*t.csv"):
        load_task(tmp_path, "t")


def _rows_of_size(size: int) -> list[dict]:
    """A first row whose text is exactly `size` bytes of UTF-8 (a multi-byte character in each field, so bytes are
    what is counted, not characters), after a small row on line 2 / row 1."""
    system, response, category, pid = "Be brief. é", "A fox. ü", "Summarize", "big-1"
    fixed = sum(len(t.encode()) for t in (system, response, category, pid))
    prompt = "€" + "x" * (size - fixed - len("€".encode()))
    return [{"prompt": "Small one.", "response": "Small.", "system": None, "category": "Summarize", "prompt_id": "small-1"},
            {"prompt": prompt, "response": response, "system": system, "category": category, "prompt_id": pid}]


def _write(path, rows):
    ext = path.suffix[1:]
    if ext == "jsonl":
        write_jsonl(path, [{k: v for k, v in r.items() if v is not None} for r in rows])
    elif ext == "csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("ext,where", [("jsonl", r"t\.jsonl:2"), ("csv", r"t\.csv:3"), ("parquet", r"t\.parquet: row 2")])
def test_one_row_size_limit_in_every_format(tmp_path, ext, where):
    """One limit for every format, on the row's text: a row at MAX_ROW_BYTES loads whole (the csv module alone would
    stop at 131,072 characters), one byte more fails naming the file, the line and the size."""
    from llamaduo.coverage.prepare import MAX_ROW_BYTES

    field_limit = csv.field_size_limit()
    rows = _rows_of_size(MAX_ROW_BYTES)
    assert MAX_ROW_BYTES > 131072 * 4  # past the csv module's field limit, even counted in 4-byte characters
    _write(tmp_path / f"t.{ext}", rows)
    loaded = load_task(tmp_path, "t")
    assert loaded[1]["instruction"] == rows[1]["prompt"] and loaded[1]["id"] == "big-1"
    _write(tmp_path / f"t.{ext}", _rows_of_size(MAX_ROW_BYTES + 1))
    with pytest.raises(CoverageError, match=rf"{where}: the row holds 1,048,577 bytes of text, over the 1,048,576-byte limit"):
        load_task(tmp_path, "t")
    assert csv.field_size_limit() == field_limit  # the reader leaves the process-wide setting as it found it


def test_provenance_columns_and_a_folder_of_sources(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"prompt": "hand one", "response": "r1"}, {"prompt": "hand two", "response": "r2"}])
    q = json.dumps({"experiment": "support-bot", "filter": "tags.feature = 'summary'"})
    write_jsonl(tmp_path / "t" / "mlflow.jsonl", [
        {"id": "mlflow:tr-1", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q1"},
                                           {"role": "assistant", "content": "a1"}],
         "source": "mlflow", "source_id": "tr-1", "capture_query": q}])
    pq.write_table(pa.table({"prompt": ["q2"], "response": ["a2"], "id": ["otlp:s-2"], "source": ["otlp"],
                             "source_id": ["s-2"], "capture_query": [q]}), tmp_path / "t" / "otlp.parquet")
    rows = load_task(tmp_path, "t")
    assert [r["id"] for r in rows][2:] == ["mlflow:tr-1", "otlp:s-2"]
    assert rows[2]["system"] == "Be brief." and set(rows[2]) == set(rows[0])  # the pair only: provenance stays in the file
    from llamaduo.coverage.prepare import read_rows
    assert [p for _, _, p in read_rows(tmp_path / "t" / "mlflow.jsonl", "t")] == [
        {"source": "mlflow", "source_id": "tr-1", "capture_query": q}]
    # the same id in two files of the task names both places
    write_jsonl(tmp_path / "t" / "more.jsonl", [{"id": "mlflow:tr-1", "prompt": "q9", "response": "a9"}])
    with pytest.raises(CoverageError, match=r"t/more.jsonl:1: duplicate id 'mlflow:tr-1' \(first at .*t/mlflow.jsonl:1\)"):
        load_task(tmp_path, "t")


@pytest.mark.parametrize("row,msg", [
    ({"source": 3}, "`source` must be a string, got int"),
    ({"source_id": "tr-1"}, "`source_id` without `source`"),
    ({"source": "mlflow", "capture_query": {"x": 1}}, "`capture_query` must be a string, got dict"),
])
def test_bad_provenance_names_file_and_line(tmp_path, row, msg):
    write_jsonl(tmp_path / "t.jsonl", [{"prompt": "fine", "response": "ok"}, {"prompt": "p", "response": "r", **row}])
    with pytest.raises(CoverageError, match=r"t.jsonl:2: .*" + re.escape(msg)):
        load_task(tmp_path, "t")


def test_the_sources_folder_holds_only_coverage_files(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "notes.txt").write_text("x")
    with pytest.raises(CoverageError, match=r"t/notes.txt is not a .jsonl, .csv or .parquet file"):
        load_task(tmp_path, "t")
    (tmp_path / "t" / "notes.txt").unlink()
    with pytest.raises(CoverageError, match=r"no t.jsonl, t.csv or t.parquet and no files in .*t/"):
        load_task(tmp_path, "t")
    write_jsonl(tmp_path / "t" / "a.jsonl", [{"prompt": "only one", "response": "r"}])
    with pytest.raises(CoverageError, match=r"t/a.jsonl has 1 row\(s\)"):
        load_task(tmp_path, "t")


def test_provenance_counts_in_the_row_size_limit(tmp_path):
    from llamaduo.coverage.prepare import MAX_ROW_BYTES

    base = {"prompt": "p", "response": "r", "source": "mlflow", "source_id": "tr-9"}
    fill = MAX_ROW_BYTES - sum(len(v) for v in base.values())
    write_jsonl(tmp_path / "t.jsonl", [{"prompt": "fine", "response": "ok"}, {**base, "capture_query": "q" * fill}])
    assert len(load_task(tmp_path, "t")) == 2
    write_jsonl(tmp_path / "t.jsonl", [{"prompt": "fine", "response": "ok"}, {**base, "capture_query": "q" * (fill + 1)}])
    with pytest.raises(CoverageError, match=r"t.jsonl:2: the row holds 1,048,577 bytes"):
        load_task(tmp_path, "t")
