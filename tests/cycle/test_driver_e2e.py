"""The migration loop for real: two cycles of `dvc repro` in a temporary git repo against a loopback service
(OpenAI wire format), a real MLflow server and a real S3 API (moto) as the DVC remote; SIGKILL at every side effect
of a cycle and mid-training, each followed by a restart that repeats no side effect and pays for no call twice."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
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


# the service's API key: written nowhere. Built at run time, so this file (copied into the project) does not hold it
SENTINEL = "llamaduo-e2e-sentinel-" + hashlib.sha256(b"the service's key").hexdigest()[:32]


def env_for(proj: Path, uri: str | None = None, **extra) -> dict:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", HF_HUB_OFFLINE="1",
               MLFLOW_TRACKING_URI=uri or f"sqlite:///{proj}/.llamaduo/mlflow.db", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t", FAKE_SERVICE_KEY=SENTINEL, **extra)
    env.pop("LLAMADUO_FAILPOINT", None)
    return env


def tiny_params(proj: Path, base_url: str) -> None:
    p = yaml.safe_load((proj / "params.yaml").read_text())
    p["data"].update(max_rows_per_task=24, train_ratio=0.875)  # 21 train, 3 test
    p["providers"]["fake"] = {"kind": "openai_compatible", "model": "fake-service", "base_url": base_url,
                              "api_key_env": "FAKE_SERVICE_KEY", "concurrency": 4, "max_retries": 0}
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


def files_under(*roots: Path):
    for root in roots:
        for f in root.rglob("*"):
            if f.is_file() and ".git/objects" not in str(f):
                yield f


def test_two_cycles_survive_a_kill_at_every_side_effect_and_share_through_s3_and_an_mlflow_server(tmp_path):
    """The loop against a team's setup (an MLflow server, an S3 DVC remote), killed with SIGKILL at each side effect
    of a cycle and restarted each time: one commit per cycle, one registry version per cycle of this loop, the alias
    on this loop's version, no service call paid twice; then a teammate's clone restores cycle 1 byte for byte."""
    from fakes.mlflow_server import mlflow_server
    from fakes.s3 import AWS_UNSET, s3_server

    proj = copy_project(tmp_path / "project")
    service = Service()
    with FakeOpenAI(answer=service) as fake, mlflow_server(tmp_path / "mlflow") as uri, s3_server() as (endpoint, bucket, aws):
        base = {k: v for k, v in env_for(proj, uri, **aws).items() if k not in AWS_UNSET}
        run_env = lambda **kw: base | kw  # noqa: E731
        tiny_params(proj, fake.base_url)
        git(proj, "init", "-q")
        subprocess.run(["dvc", "remote", "add", "-d", "team", f"s3://{bucket}/cache"], cwd=proj, env=base, check=True)
        subprocess.run(["dvc", "remote", "modify", "team", "endpointurl", endpoint], cwd=proj, env=base, check=True)
        git(proj, "add", "-A")
        git(proj, "commit", "-qm", "project")
        (proj / ".env.local").write_text(f"FAKE_SERVICE_KEY={SENTINEL}\n")  # staged by the user: never committed
        git(proj, "add", "-f", ".env.local")
        logfile = tmp_path / "loop.log"
        cmd = [str(Path(sys.executable).parent / "llamaduo"), "loop", "--allow-dirty"]

        def loop(failpoint=None, **kw):
            env = run_env(**({"LLAMADUO_FAILPOINT": failpoint} if failpoint else {}))
            with logfile.open("a") as log:
                log.write(f"\n=== run (failpoint {failpoint}) ===\n")
                log.flush()
                return subprocess.Popen(cmd, cwd=proj, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kw)

        def killed_at(failpoint):
            proc = loop(failpoint)
            assert proc.wait(timeout=1500) == -signal.SIGKILL, logfile.read_text()[-4000:]

        def cycle_commits():
            return [s for s in git(proj, "log", "--format=%s").splitlines() if s.startswith("llamaduo cycle")]

        killed_at("loop:after_stages")
        assert cycle_commits() == []
        killed_at("loop:after_commit")
        assert [s.split(":")[0] for s in cycle_commits()] == ["llamaduo cycle 0"]
        killed_at("loop:after_child_run")
        killed_at("loop:after_register")
        assert len(cycle_commits()) == 1

        # a plain run: killed (the whole process group) once cycle 1 has paid for its synthesis and is training
        proc = loop()
        second = None
        deadline = time.monotonic() + 1500
        while time.monotonic() < deadline and proc.poll() is None:
            text = logfile.read_text().split("failpoint None")[-1]
            service.later = service.later or "cycle 1 of" in text
            if second is None and "cycle 1 of" in text:  # a second loop on the same repo exits at once, naming the holder
                second = subprocess.run(cmd, cwd=proj, env=run_env(), capture_output=True, text=True, timeout=120)
            if "cycle 1 of" in text and "Running stage 'train'" in text.split("cycle 1 of")[1]:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.5)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, logfile.read_text()[-4000:]
        assert second.returncode == 2 and "another `llamaduo loop` is running" in second.stderr
        assert f'"pid": {proc.pid}' in second.stderr
        paid_before_restart = len(fake.requests)

        killed_at("promote:after_alias")
        again = loop()
        assert again.wait(timeout=1500) == 0, logfile.read_text()[-6000:]
        assert "gate passed at cycle 1" in logfile.read_text().split("failpoint None")[-1]

        # no request reached the service twice, across six kills
        bodies = [json.dumps(r, sort_keys=True) for r in fake.requests]
        assert len(bodies) == len(set(bodies))
        synth_calls = sum(r.get("response_format", {}).get("json_schema", {}).get("name") == "pairs" for r in fake.requests)
        assert synth_calls >= 2 and len(fake.requests) > paid_before_restart  # cycle 1's judging came after the restart

        # one commit per cycle, then one for the promotion; the user's staged file in none of them
        subjects = git(proj, "log", "--format=%s").splitlines()
        assert [s.split(":")[0] for s in subjects] == ["llamaduo cycle 1", "llamaduo cycle 1", "llamaduo cycle 0", "project"]
        assert ".env.local" not in git(proj, "log", "--name-only", "--format=") and ".env.local" in git(proj, "diff", "--cached", "--name-only")
        history = json.loads((proj / "metrics/history.json").read_text())
        score, (low, high) = history[1]["score"], history[1]["ci95"]
        assert subjects[0] == f"llamaduo cycle 1: v2 is now 'champion' (precision {score:.2f} passes (threshold 40))"
        champion = json.loads(git(proj, "show", "HEAD:metrics/champion.json"))
        assert champion == {"version": "2", "cycle": 1, "metric": "precision", "score": score, "ci_low": low, "ci_high": high}
        assert json.loads(git(proj, "show", "HEAD~1:metrics/champion.json")) == {}
        diff = subprocess.run(["dvc", "metrics", "diff", "HEAD~2", "HEAD~1", "--json"], cwd=proj, env=base,
                              capture_output=True, text=True, check=True)
        changed = json.loads(diff.stdout)
        # the headline is the one DVC metric (the detail files are plain outputs): what a reviewer compares
        assert set(changed) == {"metrics/headline.json"} and "judge.fake.precision.mean" in changed["metrics/headline.json"]
        params_diff = subprocess.run(["dvc", "params", "diff", "HEAD~2", "HEAD~1", "--json"], cwd=proj, env=base,
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

        # on the server: two registry versions, one per cycle of this loop; the alias on the one that passed; one
        # child run per cycle; the promotion written once in the history although it was cut between alias and history
        import mlflow

        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient()
        state = json.loads((proj / ".llamaduo/loop.json").read_text())
        versions = sorted(client.search_model_versions("name = 'llamaduo-summarize'"), key=lambda v: int(v.version))
        assert [(v.tags["cycle"], v.tags["loop"]) for v in versions] == [("0", state["parent_run_id"]), ("1", state["parent_run_id"])]
        champ = client.get_model_version_by_alias("llamaduo-summarize", "champion")
        assert champ.tags["cycle"] == "1" and "passes" in champ.tags["gate"] and "below" in versions[0].tags["gate"]
        assert [h["version"] for h in json.loads(client.get_registered_model("llamaduo-summarize").tags["llamaduo.champion_history"])] == ["2"]
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        cycles = sorted(r.data.tags.get("llamaduo.cycle") for r in runs if "llamaduo.cycle" in r.data.tags)
        assert cycles == ["0", "1"] and all(r.data.tags.get("llamaduo.version") for r in runs if "llamaduo.cycle" in r.data.tags)

        # another process loads the champion through the server alone, and it answers (greedy: twice the same)
        load = subprocess.run([sys.executable, "-c", textwrap.dedent("""
            import mlflow, pandas as pd
            model = mlflow.pyfunc.load_model("models:/llamaduo-summarize@champion")
            prompt = pd.DataFrame({"prompt": ["Summarize: the sky is blue."]})
            a, b = (model.predict(prompt, params={"max_new_tokens": 4}) for _ in range(2))
            assert len(a) == 1 and a[0].strip() and a == b, a
            print("ANSWER", repr(a[0]))
        """)], cwd=tmp_path, env=env_for(tmp_path / "elsewhere", uri), capture_output=True, text=True, timeout=600)
        assert load.returncode == 0 and "ANSWER" in load.stdout, load.stderr[-3000:]

        # a teammate: clone, pull from the bucket, check out cycle 0 then cycle 1; cycle 1's adapter byte for byte
        mate = tmp_path / "teammate"
        subprocess.run(["git", "clone", "-q", str(proj), str(mate)], env=base, check=True)
        cycle1 = git(proj, "log", "--format=%H", "-n", "1", "--grep=^Llamaduo-Step: cycle$", "--grep=^Llamaduo-Cycle: 1$", "--all-match").strip()
        cycle0 = git(proj, "log", "--format=%H", "-n", "1", "--grep=^Llamaduo-Step: cycle$", "--grep=^Llamaduo-Cycle: 0$", "--all-match").strip()
        adapter = {f.relative_to(proj): f.read_bytes() for f in (proj / "models/adapter").rglob("*") if f.is_file()}
        for sha in (cycle0, cycle1):
            subprocess.run(["git", "checkout", "-q", sha], cwd=mate, env=base, check=True)
            subprocess.run(["dvc", "pull", "-q"], cwd=mate, env=base, check=True, capture_output=True)
            got = {f.relative_to(mate): f.read_bytes() for f in (mate / "models/adapter").rglob("*") if f.is_file()}
            assert (got == adapter) == (sha == cycle1)

        # the API key reached no file the loop, its stages, DVC, git or MLflow wrote, and no log
        leaks = [str(f) for f in files_under(proj, tmp_path / "mlflow", mate) if f.name != ".env.local" and SENTINEL.encode() in f.read_bytes()]
        assert leaks == [] and SENTINEL not in logfile.read_text() and SENTINEL not in git(proj, "log", "-p", "--all")
