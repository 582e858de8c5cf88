"""Coverage data: read each task's file (JSONL, CSV or Parquet), check every row, split train/test by the ratio phi
(each row's side fixed by a seeded hash of its id, see `split`).

A row becomes {id, task, instruction, response, system, history, category}: the last user turn is the
instruction, the last assistant turn the response (the target), an optional system prompt, and the earlier
turns as `history` (None for a single-turn row). Accepted shapes (llamaduo's docs/your-project.md):

- JSONL, one object a line: `{"messages": [...]}` (OpenAI chat / no_robots: an optional system message first,
  then user and assistant turns alternating, ending with the assistant's), or the columns below as keys;
- columns (JSONL keys, a CSV header, Parquet columns): `prompt`, `response`, and optionally `system`,
  `history` (a list of {role, content}; in CSV a JSON string of that list), `prompt_id` (or `id`), `category`.

Either shape may carry provenance, the columns `llamaduo capture` writes: `source` (where the row was recorded:
`mlflow`, `openai`, `otlp`), `source_id` (its trace, completion or span id there) and `capture_query` (the query
that selected it, as JSON text); each a string, `source_id` only with `source`. They are checked and counted in
the row's size; the split and training read only the pair.

A task's rows come from `<task>.jsonl`, `.csv` or `.parquet` (at most one of them) plus every file of those formats
in the folder `<task>/` (where capture writes one file per source); ids are unique across all of them.

A row holds at most 1 MiB (1,048,576 bytes) of text in every format: the UTF-8 bytes of its system prompt,
every turn's content (earlier turns, prompt, response), its category and its id as the file gives them. That is
about 250,000 tokens of English, past the context of the models this tunes; a longer row is refused, naming the
file, the line and its size (`llamaduo.coverage.prepare.MAX_ROW_BYTES`, a constant of the package).

Every error names the file and line (Parquet: the row).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from llamaduo.errors import CoverageError

FORMATS = ("jsonl", "csv", "parquet")
PROVENANCE = ("source", "source_id", "capture_query")
COLUMNS = ("prompt", "response", "system", "history", "prompt_id", "id", "category", *PROVENANCE)
SYSTEM_ROLES = ("system", "developer")  # OpenAI's newer name for the system message
ROLES = ("user", "assistant")  # the turns after the system message alternate in this order
# the one size limit of a row, whatever its format (see the module docstring): counted on the row's text, so a row
# that passes in JSONL passes in CSV and Parquet (their quoting and encoding overheads differ)
MAX_ROW_BYTES = 1 << 20


# -- reading the files: (where, object) per row


def _utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a leading BOM (Excel's CSVs) is not part of the first line
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise CoverageError(f"{path}:{line}: byte 0x{data[exc.start]:02x} at column {col} is not UTF-8; "
                            "save the file as UTF-8") from None


def _jsonl(path: Path) -> Iterator[tuple[str, object]]:
    # split on "\n" only: str.splitlines would also split at U+2028 inside a JSON string
    for lineno, line in enumerate(_utf8(path).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise CoverageError(f"{where}: not valid JSON ({exc.msg})") from None


def _check_header(path: Path, names: list[str], where: str) -> None:
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise CoverageError(f"{where}: unknown column(s) {unknown}; the columns are {list(COLUMNS)}")
    missing = [n for n in ("prompt", "response") if n not in names]
    if missing:
        raise CoverageError(f"{where}: missing column(s) {missing}")


def _csv(path: Path) -> Iterator[tuple[str, object]]:
    reader = csv.reader(io.StringIO(_utf8(path), newline=""))
    header, prev = None, 0
    while True:
        # the csv module's own field limit (131,072 characters, process-wide) would cut rows short of
        # MAX_ROW_BYTES; the whole file is in memory already, so lifting it for our read costs nothing
        limit = csv.field_size_limit(sys.maxsize)
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise CoverageError(f"{path}:{prev + 1}: {exc}") from None
        finally:
            csv.field_size_limit(limit)
        where, prev = f"{path}:{prev + 1}", reader.line_num  # a quoted field may span lines: report the first
        if header is None:
            _check_header(path, record, where)
            header = record
            continue
        if not record:
            continue
        if len(record) != len(header):
            raise CoverageError(f"{where}: {len(record)} fields, the header has {len(header)}")
        obj: dict = {k: v for k, v in zip(header, record) if v != ""}  # an empty cell is a missing value
        if "history" in obj:
            try:
                obj["history"] = json.loads(obj["history"])
            except json.JSONDecodeError as exc:
                raise CoverageError(f"{where}: `history` is not valid JSON ({exc.msg}); in CSV it is a JSON list "
                                    'of {"role", "content"} objects') from None
        yield where, obj


def _parquet(path: Path) -> Iterator[tuple[str, object]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001  (pyarrow raises several kinds for a broken file; all mean the same here)
        raise CoverageError(f"{path}: not a readable Parquet file ({exc})") from None
    _check_header(path, table.column_names, str(path))
    for i, obj in enumerate(table.to_pylist(), 1):
        obj = {k: v for k, v in obj.items() if v is not None}
        if isinstance(obj.get("history"), str):  # a JSON string column, as in CSV
            try:
                obj["history"] = json.loads(obj["history"])
            except json.JSONDecodeError as exc:
                raise CoverageError(f"{path}: row {i}: `history` is not valid JSON ({exc.msg})") from None
        yield f"{path}: row {i}", obj


READERS = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet}


# -- one row


def _text(value, name: str, where: str, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise CoverageError(f"{where}: `{name}` must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise CoverageError(f"{where}: `{name}` is empty")
    return value


def _turns(turns: list[tuple[str, object, str]], where: str) -> tuple[list[dict], str, str]:
    """(history, instruction, response) from (label, role, content) turns that alternate user/assistant and end
    with the assistant's; a bad turn is named by its label (e.g. `messages[3]`)."""
    if len(turns) < 2:
        raise CoverageError(f"{where}: needs at least a user turn and an assistant turn, got {len(turns)} turn(s)")
    out = []
    for k, (label, role, content) in enumerate(turns):
        want = ROLES[k % 2]
        if role in SYSTEM_ROLES:
            raise CoverageError(f"{where}: {label}: a system message is accepted only as the first message")
        if role != want:
            raise CoverageError(f"{where}: {label}: expected a {want} turn, got role {role!r} (turns alternate "
                                "user/assistant and end with the assistant's answer)")
        name = label if label in ("prompt", "response") else f"{label}.content"
        if not isinstance(content, str):
            raise CoverageError(f"{where}: `{name}` must be a string, got {type(content).__name__}")
        if k >= len(turns) - 2 and not content.strip():  # the instruction and the answer must say something
            raise CoverageError(f"{where}: `{name}` is empty")
        out.append({"role": role, "content": content})
    if len(turns) % 2:
        raise CoverageError(f"{where}: the last turn must be the assistant's answer, got a {turns[-1][1]} turn")
    return out[:-2], out[-2]["content"], out[-1]["content"]


def _labelled(turns: list, name: str, where: str) -> list[tuple[str, object, object]]:
    """(`name[i]`, role, content) per turn, for the error messages of `_turns`; a turn must be an object."""
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise CoverageError(f"{where}: {name}[{i}] must be an object with `role` and `content`, got {type(t).__name__}")
        out.append((f"{name}[{i}]", t.get("role"), t.get("content")))
    return out


def _from_messages(messages, where: str) -> tuple[str | None, list[dict], str, str]:
    if not isinstance(messages, list):
        raise CoverageError(f"{where}: `messages` must be a list, got {type(messages).__name__}")
    labelled = _labelled(messages, "messages", where)
    system = None
    if labelled and labelled[0][1] in SYSTEM_ROLES:
        system = _text(labelled[0][2], "messages[0].content", where, required=False)
        labelled = labelled[1:]
    history, instruction, response = _turns(labelled, where)
    return system, history, instruction, response


def _from_columns(obj: dict, where: str) -> tuple[str | None, list[dict], str, str]:
    missing = [k for k in ("prompt", "response") if k not in obj]
    if missing:
        raise CoverageError(f"{where}: missing column(s) {missing}; a row needs `messages` or both `prompt` and `response`")
    system = _text(obj.get("system"), "system", where, required=False)
    history = obj.get("history") or []
    if not isinstance(history, list):
        raise CoverageError(f"{where}: `history` must be a list of {{role, content}} turns, got {type(history).__name__}")
    labelled = _labelled(history, "history", where)
    if len(labelled) % 2:
        raise CoverageError(f"{where}: `history` must end with an assistant turn (the prompt is the next user turn)")
    labelled += [("prompt", "user", obj["prompt"]), ("response", "assistant", obj["response"])]
    history, instruction, response = _turns(labelled, where)
    return system, history, instruction, response


def check_row(task: str, obj, where: str) -> dict:
    """One row object (a JSONL line's object, a CSV or Parquet row as a dict) checked and made the task's pair
    `{id, task, instruction, response, system, history, category}`; a CoverageError names `where` and the cause."""
    return _row_to_pair(task, obj, where)


def _row_to_pair(task: str, obj, where: str) -> dict:
    if not isinstance(obj, dict):
        raise CoverageError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:  # OpenAI chat and no_robots (which also has `prompt`: the messages are the source)
        system, history, instruction, response = _from_messages(obj["messages"], where)
    else:
        system, history, instruction, response = _from_columns(obj, where)
    system = system if system and system.strip() else None
    given_id = next((obj[k] for k in ("prompt_id", "id") if obj.get(k) not in (None, "")), None)
    if given_id is None:
        # content hash; a single-turn row without a system prompt hashes its instruction alone (as it always did)
        material = instruction if not (system or history) else json.dumps([system, history, instruction])
        row_id = hashlib.sha256(material.encode()).hexdigest()
    elif isinstance(given_id, bool) or not isinstance(given_id, (str, int)):
        raise CoverageError(f"{where}: `prompt_id` must be a string or an integer, got {type(given_id).__name__}")
    else:
        row_id = given_id
    category = _text(obj.get("category"), "category", where, required=False)
    provenance = [_text(obj.get(k), k, where, required=False) or "" for k in PROVENANCE]
    if provenance[1] and not provenance[0]:
        raise CoverageError(f"{where}: `source_id` without `source`; name where the row was recorded")
    texts = [system or "", *(t["content"] for t in history), instruction, response, category or "",
             "" if given_id is None else str(given_id), *provenance]
    # surrogatepass: a JSON string may hold a lone surrogate (\ud800), which is still text the row carries
    size = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
    if size > MAX_ROW_BYTES:
        raise CoverageError(f"{where}: the row holds {size:,} bytes of text, over the {MAX_ROW_BYTES:,}-byte limit of a "
                            "coverage row (system prompt, turns, category, id and provenance, as UTF-8); shorten or split it")
    return {
        "id": str(row_id),
        "task": task,
        "instruction": instruction,
        "response": response,
        "system": system,
        "history": history or None,
        "category": category or task,
    }


# -- a task's file


def task_files(coverage_dir: str | Path, task: str, *, required: bool = True) -> list[Path]:
    """The task's files: `<task>.<format>` (at most one) first, then the files of the folder `<task>/` by name.
    None is an error, or [] without `required`."""
    d = Path(coverage_dir)
    found = [d / f"{task}.{ext}" for ext in FORMATS if (d / f"{task}.{ext}").is_file()]
    if len(found) > 1:
        raise CoverageError(f"task {task!r}: several files {[str(p) for p in found]}; keep one (more sources go in "
                            f"the folder {d / task}/)")
    folder = d / task
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.name.startswith("."):  # editor and atomic-write leftovers are not data
                continue
            if not p.is_file() or p.suffix[1:] not in FORMATS:
                raise CoverageError(f"task {task!r}: {p} is not a .jsonl, .csv or .parquet file; the folder "
                                    f"{folder}/ holds only the task's coverage files")
            found.append(p)
    if not found and required:
        have = sorted({p.stem for ext in FORMATS for p in d.glob(f"*.{ext}")} | {p.name for p in d.iterdir() if p.is_dir()}
                      if d.is_dir() else set())
        raise CoverageError(f"task {task!r}: no {task}.jsonl, {task}.csv or {task}.parquet and no files in {folder}/ "
                            f"in {d} (tasks here: {have})")
    return found


def read_file(path: str | Path) -> Iterator[tuple[str, object]]:
    """(where, object) per row of one coverage file, by its extension; `where` names the file and line (Parquet: row)."""
    path = Path(path)
    if path.suffix[1:] not in FORMATS:
        raise CoverageError(f"{path}: not a .jsonl, .csv or .parquet file")
    return READERS[path.suffix[1:]](path)


def read_rows(path: str | Path, task: str) -> Iterator[tuple[str, dict, dict]]:
    """(where, row, provenance) per row of one file: the checked row as `load_task` gives it, and its provenance
    columns (those present)."""
    for where, obj in read_file(path):
        row = _row_to_pair(task, obj, where)
        yield where, row, {k: obj[k] for k in PROVENANCE if obj.get(k) not in (None, "")}


def _load(coverage_dir: str | Path, task: str, seen: dict[str, str], *, min_rows: int = 2) -> list[dict]:
    """The task's rows; `seen` (id -> where it was first read) catches ids repeated within and across tasks."""
    paths = task_files(coverage_dir, task, required=min_rows > 0)
    rows = []
    for path in paths:
        for where, obj in read_file(path):
            row = _row_to_pair(task, obj, where)
            if row["id"] in seen:
                raise CoverageError(f"{where}: duplicate id {row['id']!r} (first at {seen[row['id']]}); ids must be "
                                    "unique across all tasks")
            seen[row["id"]] = where
            rows.append(row)
    if len(rows) < min_rows:
        where = str(paths[0]) if len(paths) == 1 else f"{', '.join(map(str, paths))} together"
        raise CoverageError(f"task {task!r}: {where} has {len(rows)} row(s); a train/test split needs at least 2")
    return rows


def load_task(coverage_dir: str | Path, task: str) -> list[dict]:
    return _load(coverage_dir, task, {})


def held_rows(coverage_dir: str | Path, task: str) -> list[dict]:
    """The task's rows however few, [] when it has no file yet (what new rows are checked against before they join)."""
    return _load(coverage_dir, task, {}, min_rows=0)


def side_score(row_id: str, seed: int, purpose: str = "split") -> float:
    """A number in [0, 1) fixed by the seed and the row's id alone (the first 8 bytes of SHA-256 of
    `purpose:seed:id`): the split and the cap rank rows by it, so a row's place never depends on the other rows.
    A row without an id has the content hash `_row_to_pair` gives it (of its instruction, or of its system prompt,
    earlier turns and instruction), so the same text keeps its side."""
    digest = hashlib.sha256(f"{purpose}:{seed}:{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split(rows: list[dict], *, train_ratio: float, seed: int, max_rows: int | None = None) -> tuple[list[dict], list[dict]]:
    """Each row's side by a seeded hash of its id: train when `side_score(id, seed) < train_ratio`, else test.

    Adding rows never moves an old one, so a capture that grows a task keeps every test row where the gate
    paired it; the share of train is train_ratio on average (a binomial count, not an exact one). Two cases
    bend the rule, both named here because they can move a row:
    - a cap (`max_rows`) keeps the rows with the lowest score of a second, independent hash; a new row may push
      an old one out of the cap, but a row that stays keeps its side;
    - both splits get at least one row: when the hash leaves one side empty, the row of the other side whose score
      is nearest the ratio crosses over, and goes back once a row lands on the empty side by its own hash.
    """
    if not 0 < train_ratio < 1:
        raise CoverageError(f"`data.train_ratio` must be in (0, 1), got {train_ratio}")
    if len(rows) < 2:
        raise CoverageError(f"a train/test split needs at least 2 rows, got {len(rows)}")
    if max_rows is not None:
        rows = sorted(rows, key=lambda r: (side_score(r["id"], seed, "cap"), r["id"]))[:max_rows]
    scored = sorted(((side_score(r["id"], seed), r["id"], r) for r in rows), key=lambda t: t[:2])
    n_train = sum(s < train_ratio for s, _, _ in scored)
    n_train = min(max(1, n_train), len(scored) - 1)  # sorted by score: the borrowed row is the one nearest the ratio
    train = [dict(r, split="train") for _, _, r in scored[:n_train]]
    test = [dict(r, split="test") for _, _, r in scored[n_train:]]
    return train, test


def prepare(*, coverage_dir: str, tasks: list[str], train_ratio: float, seed: int, max_rows_per_task: int | None):
    train, test, seen = [], [], {}
    for task in tasks:
        tr, te = split(_load(coverage_dir, task, seen), train_ratio=train_ratio, seed=seed, max_rows=max_rows_per_task)
        train += tr
        test += te
    return train, test
