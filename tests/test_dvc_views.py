"""DVC's own views of a cycle read well: `dvc metrics show`/`diff` print the headline figures only (metrics/headline.json),
the detail files stay outputs that the loop, MLflow and the HTML report read, and every declared plot loads on a
fresh clone, where metrics/history.json is the committed empty history."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from report_fixtures import write_project_outputs

from conftest import ROOT, copy_project
from llamaduo import paths

# every metrics file the stages wrote before headline.json existed: still written, still committed, not DVC metrics
DETAILS = {"metrics/prepare.json", "metrics/synthesize.json", "metrics/curate.json", "metrics/train.json", "metrics/merge.json",
           "metrics/infer.json", "metrics/baseline.json", "metrics/eval.json", "metrics/summary.json", "metrics/worst.json"}


def declared() -> tuple[dict, dict]:
    """{path: options} of every stage's `outs` and `metrics`."""
    outs, metrics = {}, {}
    for body in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        for kind, into in (("outs", outs), ("metrics", metrics)):
            for o in body.get(kind, []):
                into |= o if isinstance(o, dict) else {o: {}}
    return outs, metrics


def test_the_headline_is_the_one_dvc_metric_and_the_details_stay_outputs():
    outs, metrics = declared()
    assert list(metrics) == ["metrics/headline.json"]
    assert DETAILS <= set(outs) and all(outs[f] == {"cache": False} for f in DETAILS)  # in git, as before
    assert outs["metrics/report.html"] == {"cache": False}


def dvc(proj: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    res = subprocess.run(["dvc", *args], cwd=proj, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"dvc {' '.join(args)}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


def git(proj: Path, *args: str) -> None:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    subprocess.run(["git", *args], cwd=proj, env=env, check=True, capture_output=True)


def test_metrics_and_plots_on_a_fresh_clone_and_after_a_cycle(tmp_path):
    # the committed empty history (a fresh clone has it; the loop appends to it)
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", str(paths.HISTORY)], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    assert listed == [str(paths.HISTORY)] and json.loads((ROOT / paths.HISTORY).read_text()) == []
    proj = copy_project(tmp_path / "p")
    shutil.copy2(ROOT / paths.HISTORY, proj / paths.HISTORY)
    git(proj, "init", "-q")

    fresh = json.loads(dvc(proj, "plots", "show", "--json").stdout)
    assert fresh["data"][str(paths.HISTORY)] == []
    assert not [e for e in fresh.get("errors", []) if e["name"] == str(paths.HISTORY)]

    # a cycle's outputs (synthetic): every declared plot loads, and the HTML page renders too
    head = write_project_outputs(proj, history=[])
    plots = json.loads(dvc(proj, "plots", "show", "--json").stdout)
    assert plots.get("errors", []) == [] and {str(paths.HISTORY), "metrics/plots/scores.json", "metrics/plots/loss.json"} <= set(plots["data"])
    rendered = dvc(proj, "plots", "show", "-o", str(tmp_path / "plots"))
    assert "failed" not in rendered.stdout + rendered.stderr and (tmp_path / "plots" / "index.html").is_file()

    shown = json.loads(dvc(proj, "metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]  # keyed by revision: "" for the workspace
    assert list(files) == ["metrics/headline.json"] and files["metrics/headline.json"]["data"] == head

    # the next cycle changed every file; `dvc metrics diff` prints the headline's rows only
    git(proj, "add", "-A")
    git(proj, "commit", "-qm", "cycle 0")
    for f in DETAILS - {"metrics/worst.json"}:
        body = json.loads((proj / f).read_text())
        (proj / f).write_text(json.dumps(body | {"changed": 1}))
    head["judge"]["j1"]["precision"]["mean"] = 70.0
    head["gate"] |= {"passed": True, "reason": "precision 70.00 passes (threshold 60)"}
    (proj / "metrics/headline.json").write_text(json.dumps(head))
    diff = dvc(proj, "metrics", "diff", "HEAD", "--all").stdout.strip().splitlines()
    assert len(diff) == 1 + 40 and all(line.startswith("Path") or line.startswith("metrics/headline.json") for line in diff)
    changed = json.loads(dvc(proj, "metrics", "diff", "HEAD", "--json").stdout)
    assert set(changed) == {"metrics/headline.json"}
    assert changed["metrics/headline.json"]["judge.j1.precision.mean"] == {"old": 62.5, "new": 70.0, "diff": 7.5}
