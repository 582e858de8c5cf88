"""The migration loop for real: two cycles of `dvc repro` in a temporary git repo against a loopback service
(OpenAI wire format), MLflow on SQLite, a kill mid-cycle and a restart that pays for no call twice."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import copy_project
from fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.slow


class Service:
    """Synthesis answers new pairs; the judge gives 10 until the test flips `later` (when cycle 1 starts), then 90.
    A cycle-1 answer identical to a cycle-0 one is served from the call cache with its old score, as it should be."""

    def __init__(self):
        self.later = False

    def __call__(self, req, k):
        name = req.get("response_format", {}).get("json_schema", {}).get("name")
        text = req["messages"][0]["content"]
        h = hashlib.sha256(f"{text}{k}".encode()).hexdigest()[:10]
        if name == "pairs":
            return json.dumps({"pairs": [{"instruction": f"Summarize this note {h}-{i}: the meeting moved to room {i}.",
                                          "response": f"Meeting moved ({h}-{i})."} for i in range(2)]})
        score = 90 if self.later else 10
        return json.dumps({"reason": "fake", "similarity": score, "precision": score})


def env_for(proj: Path) -> dict:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", HF_HUB_OFFLINE="1",
                MLFLOW_TRACKING_URI=f"sqlite:///{proj}/.llamaduo/mlflow.db", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
                GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")


def tiny_params(proj: Path, base_url: str) -> None:
    p = yaml.safe_load((proj / "params.yaml").read_text())
    p["data"].update(max_rows_per_task=24, train_ratio=0.875)  # 21 train, 3 test
    p["providers"]["fake"] = {"kind": "openai_compatible", "model": "fake-service", "base_url": base_url,
                              "concurrency": 4, "max_retries": 0}
    p["synth"].update(provider="fake", pairs_per_request=2, max_requests=10)
    p["judge"].update(provider="fake", m=2, baseline={"services": []})  # no baseline: its calls would move the scripted scores
    # one uncapped epoch: every curated row of each cycle is trained on (the loop refuses a cap that skips rows)
    p["train"].update(epochs=1, max_steps=None, batch_size=2, max_length=128, learning_rate=0.005)
    p["infer"].update(engine="transformers", k=2, max_new_tokens=24)
    p["gate"].update(threshold=40)
    p["loop"].update(start_volume=4, max_cycles=3)
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def git(proj, *args):
    return subprocess.run(["git", *args], cwd=proj, env=env_for(proj), capture_output=True, text=True, check=True).stdout


def test_two_cycles_commit_register_promote_and_survive_a_kill(tmp_path):
    proj = copy_project(tmp_path / "project")
    service = Service()
    with FakeOpenAI(answer=service) as fake:
        tiny_params(proj, fake.base_url)
        git(proj, "init", "-q")
        git(proj, "add", "-A")
        git(proj, "commit", "-qm", "project")
        log = (tmp_path / "loop.log").open("w")
        cmd = [str(Path(sys.executable).parent / "llamaduo"), "loop"]
        proc = subprocess.Popen(cmd, cwd=proj, env=env_for(proj), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        # kill the whole process group once cycle 1 has paid for its synthesis and is training
        deadline = time.monotonic() + 1500
        while time.monotonic() < deadline and proc.poll() is None:
            text = (tmp_path / "loop.log").read_text()
            service.later = service.later or "cycle 1 of" in text
            if "cycle 1 of" in text and "Running stage 'train'" in text.split("cycle 1 of")[1]:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.5)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, (tmp_path / "loop.log").read_text()[-4000:]
        paid_before_restart = len(fake.requests)
        again = subprocess.run(cmd, cwd=proj, env=env_for(proj), capture_output=True, text=True, timeout=1500)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
        assert "gate passed at cycle 1" in again.stdout

        # no request reached the service twice, across the kill
        bodies = [json.dumps(r, sort_keys=True) for r in fake.requests]
        assert len(bodies) == len(set(bodies))
        synth_calls = sum(r.get("response_format", {}).get("json_schema", {}).get("name") == "pairs" for r in fake.requests)
        assert synth_calls >= 2 and len(fake.requests) > paid_before_restart  # cycle 1's judging came after the restart

    # one commit per cycle, then one for the promotion; dvc metrics diff shows what cycle 1 changed
    subjects = git(proj, "log", "--format=%s").splitlines()
    assert [s.split(":")[0] for s in subjects[:3]] == ["llamaduo cycle 1", "llamaduo cycle 1", "llamaduo cycle 0"]
    # the promotion commit holds the champion the next cycle's gate compares with: cycle 1's figures
    history = json.loads((proj / "metrics/history.json").read_text())
    score, (low, high) = history[1]["score"], history[1]["ci95"]
    assert subjects[0] == f"llamaduo cycle 1: v2 is now 'champion' (precision {score:.2f} passes (threshold 40))"
    champion = json.loads(git(proj, "show", "HEAD:metrics/champion.json"))
    assert champion == {"version": "2", "cycle": 1, "metric": "precision", "score": score, "ci_low": low, "ci_high": high}
    assert json.loads(git(proj, "show", "HEAD~1:metrics/champion.json")) == {}
    diff = subprocess.run(["dvc", "metrics", "diff", "HEAD~2", "HEAD~1", "--json"], cwd=proj, env=env_for(proj),
                          capture_output=True, text=True, check=True)
    changed = json.loads(diff.stdout)
    assert "metrics/eval.json" in changed and "metrics/curate.json" in changed
    params_diff = subprocess.run(["dvc", "params", "diff", "HEAD~2", "HEAD~1", "--json"], cwd=proj, env=env_for(proj),
                                 capture_output=True, text=True, check=True)
    volume = json.loads(params_diff.stdout)["params.yaml"]["synth.volume"]
    assert (volume["old"], volume["new"]) == (0, 4)

    assert [h["cycle"] for h in history] == [0, 1] and history[1]["score"] > history[0]["score"]
    # cycle 1 trained on every row it had (coverage train less the validation slice, plus the curated synthetic
    # rows) that fits the tiny max_length: trl drops a row whose prompt alone fills it, and train.json counts those
    trained = json.loads(git(proj, "show", "HEAD~1:metrics/train.json"))
    assert trained["rows_available"] == 20 + history[1]["synthetic_curated"]
    assert trained["unique_rows_seen"] == trained["rows_available"] - trained["rows_dropped_too_long"] > history[1]["synthetic_curated"]
    assert history[1]["synthetic_curated"] > 0 and trained["epochs_seen"] == 1

    # two registry versions; the alias on the one that passed
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{proj}/.llamaduo/mlflow.db")
    client = mlflow.MlflowClient()
    versions = sorted(client.search_model_versions("name = 'llamaduo-summarize'"), key=lambda v: int(v.version))
    assert [v.tags["cycle"] for v in versions] == ["0", "1"]
    champ = client.get_model_version_by_alias("llamaduo-summarize", "champion")
    assert champ.tags["cycle"] == "1" and "passes" in champ.tags["gate"] and "below" in versions[0].tags["gate"]
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    cycles = sorted(r.data.tags.get("llamaduo.cycle") for r in runs if "llamaduo.cycle" in r.data.tags)
    assert cycles == ["0", "1"]

    # the registered model loads and answers
    model = mlflow.pyfunc.load_model("models:/llamaduo-summarize@champion")
    import pandas as pd

    prompt = pd.DataFrame({"prompt": ["Summarize: the sky is blue."]})
    out = model.predict(prompt, params={"max_new_tokens": 4})
    assert len(out) == 1 and out[0].strip() and out == model.predict(prompt, params={"max_new_tokens": 4})  # greedy
