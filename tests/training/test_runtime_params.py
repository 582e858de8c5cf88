"""How a device runs a step is runtime: changing it reruns no stage (`dvc status` on a copy of the project, real
DVC), while the global batch and the other result params do."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import copy_project
from llamaduo.config import TrainParams, runtime_keys

# every knob of how a step runs, set away from its shipped value
RUNTIME = {"micro_batch_size": 4, "padding_free": True, "attn_implementation": "eager", "liger": False,
           "torch_compile": True, "save_steps": 3, "threads": 1, "cpu_preload": False, "num_processes": 2}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    proj = copy_project(tmp_path_factory.mktemp("project"))
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    return proj


def changed_params(proj: Path) -> dict[str, dict[str, str]]:
    """Each stage's params `dvc status` sees changed against dvc.lock, {key: how} (the copy lacks the outputs, so
    every stage is out of date for those: only the params tell what a change reruns)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    res = subprocess.run(["dvc", "status", "--json"], cwd=proj, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = {}
    for stage, changes in json.loads(res.stdout or "{}").items():
        params = {}
        for c in changes:
            if isinstance(c, dict):
                params |= c.get("changed deps", {}).get("params.yaml", {})
        out[stage.split(":")[-1]] = params
    return out


def with_train(proj: Path, **changes) -> None:
    f = proj / "params.yaml"
    params = yaml.safe_load(f.read_text())
    params["train"].update(changes)
    f.write_text(yaml.safe_dump(params, sort_keys=False))


def test_the_knobs_of_how_a_step_runs_are_runtime():
    assert set(RUNTIME) <= runtime_keys(TrainParams)
    assert not {"batch_size", "packing", "learning_rate", "epochs"} & runtime_keys(TrainParams)


def test_a_runtime_change_reruns_no_stage_and_a_result_change_does(project):
    original = (project / "params.yaml").read_text()
    try:
        before = changed_params(project)
        with_train(project, **RUNTIME)
        assert changed_params(project) == before
        with_train(project, learning_rate=0.001)
        after = changed_params(project)
        assert after["train"].get("train.learning_rate") == "modified"
        assert not before["train"].get("train.learning_rate")
    finally:
        (project / "params.yaml").write_text(original)
