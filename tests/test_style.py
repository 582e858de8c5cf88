"""The code passes the project's ruff configuration (pyproject.toml), so lint regressions fail the suite."""

import subprocess
import sys

from conftest import ROOT


def test_ruff_passes():
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
