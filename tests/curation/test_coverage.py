"""Curation keeps what a person would keep. Every shipped task's human coverage rows,
curated as if they were syntheses, keep at least 99%; and held out from calibration, at least 98% (the rest
are real duplicates across the halves, e.g. one review classified twice)."""

from pathlib import Path

import pytest

from llamaduo.config import CurateParams
from llamaduo.coverage.prepare import load_task, split
from llamaduo.curation import curate

COVERAGE = Path(__file__).resolve().parents[2] / "data/coverage"
TASKS = sorted(p.stem for p in COVERAGE.glob("*.jsonl"))


def rows(task):
    return [dict(r, seed_id="human", provider="coverage", model="human", request_id=r["id"], cycle=0)
            for r in load_task(COVERAGE, task)]


def test_the_shipped_tasks_are_all_checked():
    assert TASKS == ["classify", "closed_qa", "coding", "summarize"]


@pytest.mark.parametrize("task", TASKS)
def test_curation_keeps_the_tasks_own_human_rows(task):
    raw = rows(task)
    kept, dropped, counts = curate(raw, train=[], test=[], p=CurateParams())
    assert len(kept) / len(raw) >= 0.99, counts["dropped"]
    # the markup and refusal rules, whose patterns ordinary answers come close to, drop none of these human rows
    assert not {"leftover_markup", "refusal"} & set(counts["dropped"])


@pytest.mark.parametrize("task", TASKS)
def test_held_out_human_rows_survive_calibrated_curation(task):
    a, b = split(rows(task), train_ratio=0.5, seed=0)
    kept = sum(len(curate(held, train=cal, test=[], p=CurateParams())[0]) for cal, held in ((a, b), (b, a)))
    assert kept / (len(a) + len(b)) >= 0.98
