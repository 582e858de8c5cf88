"""A fresh copy of this project for a run that must not touch the checkout: the tests' end-to-end runs (a
`dvc repro`, the loop, a wheel build) and bench/cycle.py's whole cycle each work in one.

support/ holds what the tests and the benchmarks share (this module and the loopback fakes in `fakes`); both
put it on sys.path (tests/conftest.py, each bench script that needs it), so neither imports the other.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# pipeline outputs and local state: a fresh project makes its own (a stale copy would be tracked by git in the
# copy's repository); a skipped folder's .gitignore still comes along
OUTPUTS = ("models/", "data/prepared/", "data/synthetic/", "data/eval/", "metrics/", "data/services.json", ".llamaduo/",
           "bench/results/", "mlruns/")


def copy_project(dest: Path) -> Path:
    """The project's source files (git's tracked and untracked-but-not-ignored files: no venv, no outputs) in
    `dest`, as a fresh checkout has them before its first run."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        if f.startswith(OUTPUTS) and not f.endswith(".gitignore"):
            continue
        src = ROOT / f
        if src.is_file():  # a file deleted in the work tree but not yet in git is listed too
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    # no champion yet (a dep of `report`, written by the loop and `llamaduo promote`)
    (dest / "metrics").mkdir(parents=True, exist_ok=True)
    (dest / "metrics" / "champion.json").write_text("{}\n")
    return dest
