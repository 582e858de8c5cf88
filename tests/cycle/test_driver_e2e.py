"""The migration loop for real, in a project made by `llamaduo init`: two cycles of `dvc repro` against a loopback
service (OpenAI wire format), a real MLflow server and a real S3 API (moto) as the DVC remote. SIGKILL at every
failpoint of the loop (between each side effect and its record, and after the record) and mid-training, and a stop at
the step cap, each followed by a plain restart (never `--allow-dirty`: the loop's own files must not make the tree
dirty) that repeats no side effect and pays for no call twice. Then the registering folder is moved away and the
champion loads, and folds for serving, from a fresh clone that has only the tracking server and the DVC remote."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from fakes.openai_server import FakeOpenAI
from llamaduo import faults

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
    # XDG_CACHE_HOME: the base models a load fetches, kept beside the project (a "machine" of its own), not in ~/.cache
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", HF_HUB_OFFLINE="1",
               MLFLOW_TRACKING_URI=uri or f"sqlite:///{proj}/.llamaduo/mlflow.db", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t", FAKE_SERVICE_KEY=SENTINEL,
               XDG_CACHE_HOME=str(proj.parent / f"{proj.name}-cache"), **extra)
    env.pop(faults.ENV, None)
    return env


def tiny_params(proj: Path, base_url: str) -> None:
    p = yaml.safe_load((proj / "params.yaml").read_text())
    p["data"].update(max_rows_per_task=24, train_ratio=0.875)  # each row to test with chance 1/8 (a hash of its id)
    p["providers"]["fake"] = {"kind": "openai_compatible", "model": "fake-service", "base_url": base_url,
                              "api_key_env": "FAKE_SERVICE_KEY", "concurrency": 4, "max_retries": 0}
    p["synth"].update(provider="fake", pairs_per_request=2, max_requests=10)
    p["judge"].update(provider="fake", m=2, baseline={"services": []})  # no baseline: its calls would move the scripted scores
    p["judge"]["rounds"] = 1  # every answer judged: the test counts the calls paid
    # one step in cycle 0; cycle 1's volume would then leave rows unread, and the loop stops at the cap (see the test)
    p["train"].update(epochs=1, max_steps=1, batch_size=2, max_length=128, learning_rate=0.005)
    p["infer"].update(engine="transformers", k=2, max_new_tokens=24)
    # the point rule on the scripted judge: this test is about kills and restarts (tests/reporting test the modes)
    p["gate"].update(metric="precision", mode="point", threshold=40)
    p["loop"].update(start_volume=4, max_cycles=3)
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def git(proj, *args):
    return subprocess.run(["git", *args], cwd=proj, env=env_for(proj), capture_output=True, text=True, check=True).stdout


def files_under(*roots: Path):
    for root in roots:
        for f in root.rglob("*"):
            if f.is_file() and ".git/objects" not in str(f):
                yield f


# what the champion is asked, greedy, on each "machine"
PROMPTS = ["Summarize: the sky is blue.", "Summarize: the meeting moved to room 4 on Friday."]

ANSWER_HERE = textwrap.dedent("""
    import json, sys, mlflow, pandas as pd
    model = mlflow.pyfunc.load_model("models:/llamaduo-summarize@champion")
    prompt = pd.DataFrame({"prompt": json.loads(sys.argv[1])})
    a, b = (model.predict(prompt, params={"max_new_tokens": 8}) for _ in range(2))
    assert all(x.strip() for x in a) and a == b, (a, b)
    print("ANSWERS", json.dumps(a))
""")

# a clone on another machine: the registered model, and the folder `llamaduo serve` hands to vLLM (serving.resolve,
# then the adapter folded into the fetched base), answering with the registered model's own predict
ANSWER_ELSEWHERE = textwrap.dedent("""
    import json, sys, mlflow, pandas as pd, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from llamaduo.cycle import serving
    from llamaduo.cycle.model_registry import LocalModel
    from llamaduo.weights import folded
    prompt = pd.DataFrame({"prompt": json.loads(sys.argv[1])})
    loaded = mlflow.pyfunc.load_model("models:/llamaduo-summarize@champion").predict(prompt, params={"max_new_tokens": 8})
    version, adapter, base = serving.resolve("llamaduo-summarize", "champion")
    with folded(base, adapter) as folder:
        served = LocalModel()
        served.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        served.tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
        answers = served.predict(None, prompt, params={"max_new_tokens": 8})
    print("ANSWERS", json.dumps({"version": version, "base": base, "loaded": loaded, "served": answers}))
""")


def armed_failpoints() -> set[str]:
    """Every `faults.point` name in the package, each armed in one place."""
    armed = [m for f in (ROOT / "src").rglob("*.py") for m in re.findall(r'faults\.point\("([^"]+)"\)', f.read_text())]
    assert len(armed) == len(set(armed)), armed
    return set(armed)


def answers(res: subprocess.CompletedProcess):
    assert res.returncode == 0 and "ANSWERS" in res.stdout, res.stderr[-3000:]
    return json.loads(res.stdout.split("ANSWERS", 1)[1])


def test_two_cycles_survive_a_kill_at_every_failpoint_and_the_champion_loads_on_another_machine(tmp_path):
    """The loop against a team's setup (an MLflow server, an S3 DVC remote), killed with SIGKILL at each failpoint and
    restarted each time without `--allow-dirty`: one commit per cycle, one child run, one logged model and one registry
    version per cycle, one parent run with one point per cycle, one stored base, the alias on this loop's version, no
    service call paid twice; a teammate's clone restores cycle 1 byte for byte; the champion answers the same on a
    fresh clone elsewhere, with the registering folder gone."""
    from fakes.mlflow_server import mlflow_server
    from fakes.s3 import AWS_UNSET, s3_server

    proj = tmp_path / "project"
    exe = Path(sys.executable).parent
    service = Service()
    with FakeOpenAI(answer=service) as fake, mlflow_server(tmp_path / "mlflow") as uri, s3_server() as (endpoint, bucket, aws):
        base = {k: v for k, v in env_for(proj, uri, **aws).items() if k not in AWS_UNSET}
        run_env = lambda **kw: base | kw  # noqa: E731
        made = subprocess.run([str(exe / "llamaduo"), "init", str(proj), "--task", "summarize", "--from",
                               str(ROOT / "data/coverage/summarize.jsonl")], env=base, capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        tiny_params(proj, fake.base_url)
        subprocess.run(["dvc", "remote", "add", "-d", "team", f"s3://{bucket}/cache"], cwd=proj, env=base, check=True)
        subprocess.run(["dvc", "remote", "modify", "team", "endpointurl", endpoint], cwd=proj, env=base, check=True)
        git(proj, "commit", "-qam", "tiny params, the team's remote")
        logfile = tmp_path / "loop.log"
        cmd = [str(exe / "llamaduo"), "loop"]  # never --allow-dirty
        killed = []

        def loop(failpoint=None, **kw):
            env = run_env(**({faults.ENV: failpoint} if failpoint else {}))
            with logfile.open("a") as log:
                log.write(f"\n=== run (failpoint {failpoint}) at {time.strftime('%H:%M:%S')} ===\n")
                log.flush()
                return subprocess.Popen(cmd, cwd=proj, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kw)

        def killed_at(failpoint):
            proc = loop(failpoint)
            assert proc.wait(timeout=1500) == -signal.SIGKILL, logfile.read_text()[-4000:]
            killed.append(failpoint)

        def cycle_commits():
            return [s for s in git(proj, "log", "--format=%s").splitlines() if s.startswith("llamaduo cycle")]

        def status():
            return git(proj, "status", "--porcelain", "--untracked-files=all")

        killed_at("loop:parent_started")
        state = json.loads((proj / ".llamaduo/loop.json").read_text())
        assert state["parent_run_id"] is None and state["key"]  # the run exists; only its key is recorded
        killed_at("loop:after_stages")
        assert cycle_commits() == [] and "?? data/services.json" in status()  # an output not yet committed
        killed_at("loop:cycle_committed")
        assert [s.split(":")[0] for s in cycle_commits()] == ["llamaduo cycle 0"]
        assert status() == ""  # the cycle's commit holds every output that DVC's cache and .gitignore do not
        for point in ("loop:after_commit", "tracking:parent_metrics_logged", "loop:child_run_logged", "loop:after_child_run",
                      "registry:model_logged", "loop:version_registered", "loop:after_register"):
            killed_at(point)
        assert len(cycle_commits()) == 1

        # cycle 0 trained its one step; cycle 1's volume would leave rows unread, so the loop stops before paying for it
        capped = loop()
        assert capped.wait(timeout=1500) == 2 and "raise `train.max_steps`" in logfile.read_text().split("failpoint None")[-1]
        p = yaml.safe_load((proj / "params.yaml").read_text())
        p["train"]["max_steps"] = None  # as the message says; the loop goes on from there, no `--allow-dirty`
        (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))

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
        killed_at("loop:promotion_committed")
        again = loop()
        assert again.wait(timeout=1500) == 0, logfile.read_text()[-6000:]
        assert "gate passed at cycle 1" in logfile.read_text().split("failpoint None")[-1]
        assert status() == ""
        # every point the code arms was a kill here, once, but the folder swap's (its kill: test_loop_faults.py)
        assert sorted(killed) == sorted(armed_failpoints() - {"atomic:between_renames"})

        # no request reached the service twice, across all the kills
        bodies = [json.dumps(r, sort_keys=True) for r in fake.requests]
        assert len(bodies) == len(set(bodies))
        synth_calls = sum(r.get("response_format", {}).get("json_schema", {}).get("name") == "pairs" for r in fake.requests)
        assert synth_calls >= 2 and len(fake.requests) > paid_before_restart  # cycle 1's judging came after the restart

        # one commit per cycle, then one for the promotion
        subjects = git(proj, "log", "--format=%s").splitlines()
        assert [s.split(":")[0] for s in subjects[:4]] == ["llamaduo cycle 1", "llamaduo cycle 1", "llamaduo cycle 0",
                                                           "tiny params, the team's remote"]
        assert len(subjects) == 5 and subjects[4].startswith("llamaduo init")
        history = json.loads((proj / "metrics/history.json").read_text())
        score, (low, high) = history[1]["score"], history[1]["ci95"]
        assert subjects[0] == f"llamaduo cycle 1: v2 is now 'champion' (precision {score:.2f} passes (threshold 40))"
        champion = json.loads(git(proj, "show", "HEAD:metrics/champion.json"))
        # with the champion's per-prompt gate scores, as its cycle's report stage wrote them (the next gate pairs with them)
        scores = json.loads(git(proj, "show", "HEAD:metrics/prompt_scores/gate.json"))
        assert scores["metric"] == "precision" and len(scores["scores"]) >= 2
        assert champion == {"version": "2", "cycle": 1, "metric": "precision", "score": score, "ci_low": low, "ci_high": high,
                            "scores": scores["scores"]}
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
        # cycle 1's pre-flight estimate, made from cycle 0 before its first run (kept through the kills): every judge
        # call of cycle 0 again, and volume 4 at 2 pairs a request (nothing synthesized yet to measure a yield from)
        est = history[1]["estimate"]
        judged = json.loads(git(proj, "show", "HEAD~2:metrics/eval.json"))["usage"]
        assert est["stages"]["judge"]["calls"] == judged["calls"] + judged["cached"] > 0
        assert est["stages"]["synthesize"]["calls"] == 2 and est["volume"] == 4
        assert "pre-flight estimate: cycle 1 (volume 4): " in logfile.read_text()
        assert json.loads(git(proj, "show", "HEAD~1:metrics/estimate.json"))["1"] == est
        # cycle 1 trained on every row it had (coverage train less the validation slice, plus the curated synthetic
        # rows) that fits the tiny max_length: trl drops a row whose prompt alone fills it, and train.json counts those
        trained = json.loads(git(proj, "show", "HEAD~1:metrics/train.json"))
        prepared = json.loads(git(proj, "show", "HEAD~1:metrics/prepare.json"))["summarize"]
        assert prepared["train"] + prepared["test"] == 24 and prepared["test"] >= 1
        assert trained["rows_available"] == prepared["train"] - trained["val_rows"] + history[1]["synthetic_curated"]
        assert trained["val_rows"] >= 1
        assert trained["unique_rows_seen"] == trained["rows_available"] - trained["rows_dropped_too_long"] > history[1]["synthetic_curated"]
        assert history[1]["synthetic_curated"] > 0 and trained["epochs_seen"] == 1

        # on the server: one parent run (the one made before the first kill, adopted) with one point per cycle; one
        # child run, one logged model and one registry version per cycle; the alias on the version that passed; the
        # promotion written once in the history although it was cut between alias and history; the base stored once
        import mlflow
        from mlflow.entities import LoggedModelStatus

        from llamaduo.weights import fingerprint

        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient()
        state = json.loads((proj / ".llamaduo/loop.json").read_text())
        # the gate's error: cycles 0 and 1 each spent a third of 0.05 (loop.max_cycles 3), once each across the kills
        assert [state["cycles"][c]["alpha"] for c in ("0", "1")] == pytest.approx([0.05 / 3] * 2)
        assert state["alpha_spent"] == pytest.approx(0.1 / 3)
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        assert [r.info.run_id for r in runs if r.data.tags.get("llamaduo.loop") == "parent"] == [state["parent_run_id"]]
        points = client.get_metric_history(state["parent_run_id"], "summary.gate.score")
        assert sorted((m.step, m.value) for m in points) == [(0, history[0]["score"]), (1, history[1]["score"])]
        cycles = sorted(r.data.tags.get("llamaduo.cycle") for r in runs if "llamaduo.cycle" in r.data.tags)
        assert cycles == ["0", "1"] and all(r.data.tags.get("llamaduo.version") for r in runs if "llamaduo.cycle" in r.data.tags)
        versions = sorted(client.search_model_versions("name = 'llamaduo-summarize'"), key=lambda v: int(v.version))
        assert [(v.tags["cycle"], v.tags["loop"]) for v in versions] == [("0", state["parent_run_id"]), ("1", state["parent_run_id"])]
        experiment = runs[0].info.experiment_id
        for v in versions:
            logged = client.search_logged_models(experiment_ids=[experiment], filter_string=f"source_run_id = '{v.run_id}'")
            assert [f"models:/{m.model_id}" for m in logged] == [v.source]
        fp = fingerprint(str(proj / "models/base"))
        (stored,) = client.search_logged_models(experiment_ids=[experiment], filter_string="name = 'llamaduo-base'")
        assert stored.status == LoggedModelStatus.READY and stored.tags["base_fingerprint"] == fp
        assert {v.tags["base_fingerprint"] for v in versions} == {fp}
        champ = client.get_model_version_by_alias("llamaduo-summarize", "champion")
        assert champ.tags["cycle"] == "1" and "passes" in champ.tags["gate"] and "below" in versions[0].tags["gate"]
        assert [h["version"] for h in json.loads(client.get_registered_model("llamaduo-summarize").tags["llamaduo.champion_history"])] == ["2"]

        # another process on this machine loads the champion through the server, and it answers (greedy: twice the same)
        here = answers(subprocess.run([sys.executable, "-c", ANSWER_HERE, json.dumps(PROMPTS)], cwd=tmp_path, env=env_for(proj, uri),
                                      capture_output=True, text=True, timeout=600))

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
        leaks = [str(f) for f in files_under(proj, tmp_path / "mlflow", mate) if SENTINEL.encode() in f.read_bytes()]
        assert leaks == [] and SENTINEL not in logfile.read_text() and SENTINEL not in git(proj, "log", "-p", "--all")

        # the registering machine goes away (its project, models/base with it); a fresh clone on another machine, with
        # its own empty cache, has the tracking server and the DVC remote: the champion loads, and the folder
        # `llamaduo serve` would serve is built, from the server alone, and both answer as the champion did here
        gone = proj.rename(tmp_path / "gone")
        far = tmp_path / "far" / "clone"
        subprocess.run(["git", "clone", "-q", str(gone), str(far)], env=base, check=True)
        there = answers(subprocess.run([sys.executable, "-c", ANSWER_ELSEWHERE, json.dumps(PROMPTS)], cwd=far, env=env_for(far, uri),
                                       capture_output=True, text=True, timeout=600))
        assert there["version"] == "2" and there["base"] == str(tmp_path / "far" / "clone-cache" / "llamaduo" / "base" / fp)
        assert there["loaded"] == there["served"] == here
