"""Coverage data: read each task's JSONL, check every row, split train/test by the ratio phi."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from llamaduo.errors import CoverageError


def _row_to_pair(task: str, obj: dict, where: str) -> dict:
    if not isinstance(obj, dict):
        raise CoverageError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    messages = obj.get("messages")
    if messages is not None:
        # no_robots shape: a user turn then an assistant turn
        if not isinstance(messages, list):
            raise CoverageError(f"{where}: `messages` must be a list")
        user = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        bot = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
        if len(user) != 1 or len(bot) != 1:
            raise CoverageError(f"{where}: `messages` must hold exactly one user and one assistant turn (got {len(user)} and {len(bot)})")
        instruction, response = user[0], bot[0]
    else:
        # plain shape: {"prompt", "response"}
        missing = [k for k in ("prompt", "response") if k not in obj]
        if missing:
            raise CoverageError(f"{where}: missing column(s) {missing}; a row needs `messages` or both `prompt` and `response`")
        instruction, response = obj["prompt"], obj["response"]
    for name, value in (("instruction", instruction), ("response", response)):
        if not isinstance(value, str) or not value.strip():
            raise CoverageError(f"{where}: the {name} is empty or not text")
    row_id = obj.get("prompt_id") or hashlib.sha256(instruction.encode()).hexdigest()
    return {
        "id": str(row_id),
        "task": task,
        "instruction": instruction,
        "response": response,
        "category": obj.get("category") or task,
    }


def load_task(coverage_dir: str | Path, task: str) -> list[dict]:
    path = Path(coverage_dir) / f"{task}.jsonl"
    if not path.is_file():
        have = sorted(p.stem for p in Path(coverage_dir).glob("*.jsonl"))
        raise CoverageError(f"task {task!r}: {path} not found (tasks here: {have})")
    rows, seen = [], set()
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CoverageError(f"{where}: not valid JSON ({exc.msg})") from None
            row = _row_to_pair(task, obj, where)
            if row["id"] in seen:
                raise CoverageError(f"{where}: duplicate id {row['id']!r}")
            seen.add(row["id"])
            rows.append(row)
    if len(rows) < 2:
        raise CoverageError(f"task {task!r}: {path} has {len(rows)} row(s); a train/test split needs at least 2")
    return rows


def split(rows: list[dict], *, train_ratio: float, seed: int, max_rows: int | None = None) -> tuple[list[dict], list[dict]]:
    """Seeded shuffle, optional cap, then the first phi share is train; both splits get at least one row."""
    if not 0 < train_ratio < 1:
        raise CoverageError(f"`data.train_ratio` must be in (0, 1), got {train_ratio}")
    rows = sorted(rows, key=lambda r: r["id"])  # input order must not change the split
    random.Random(seed).shuffle(rows)
    if max_rows is not None:
        rows = rows[:max_rows]
    n_train = min(max(1, round(train_ratio * len(rows))), len(rows) - 1)
    train = [dict(r, split="train") for r in rows[:n_train]]
    test = [dict(r, split="test") for r in rows[n_train:]]
    return train, test


def prepare(*, coverage_dir: str, tasks: list[str], train_ratio: float, seed: int, max_rows_per_task: int | None):
    train, test = [], []
    for task in tasks:
        tr, te = split(load_task(coverage_dir, task), train_ratio=train_ratio, seed=seed, max_rows=max_rows_per_task)
        train += tr
        test += te
    return train, test
