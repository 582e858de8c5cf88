"""Your data and params, checked before a cycle spends anything (`pytest tests`): params.yaml validates and sets
every key dvc.yaml tracks, and each task in `data.tasks` has a coverage file that loads (a broken row fails
naming its file and line) and splits into train and test as the `prepare` stage will split it.

`llamaduo init` copies this file into every new project; this repository runs it on its own data too."""

from pathlib import Path

import pytest

from llamaduo.config import load_params
from llamaduo.coverage import load_task, split
from llamaduo.project.tracked import untracked_keys

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")


def test_params_validate_and_set_every_tracked_key():
    assert untracked_keys(ROOT / "params.yaml", ROOT / "dvc.yaml") == []


@pytest.mark.parametrize("task", PARAMS.data.tasks)
def test_the_task_loads_and_splits(task):
    d = PARAMS.data
    rows = load_task(ROOT / d.coverage_dir, task)
    train, test = split(rows, train_ratio=d.train_ratio, seed=d.seed, max_rows=d.max_rows_per_task)
    assert train and test, f"task {task!r}: the split left train or test empty"
    assert not {r["id"] for r in train} & {r["id"] for r in test}, f"task {task!r}: a row is in both train and test"
    assert all(r["instruction"].strip() and r["response"].strip() for r in rows)
