"""The loop's side effects are idempotent: the lock, the dirty-tree refusal, commits that name their paths and are
found again by their trailers, MLflow names from free text, a parent run adopted by its key, a cycle's parent points
logged once, one logged model and one registry version per run, a promotion written once, scratch and temp folders
that never delete or leak what they should not. (The kill -9 at each loop point, for real, is in
test_driver_e2e.py.)"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest

from llamaduo import atomic, faults, weights
from llamaduo.config import MlflowParams, Params
from llamaduo.cycle import driver, model_registry, tracking
from llamaduo.errors import LoopError, ParamsError
from llamaduo.merging.run import scratch

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def git(*args) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True, env=os.environ | GIT_ENV).stdout


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for k, v in GIT_ENV.items():
        monkeypatch.setenv(k, v)
    git("init", "-q")
    (tmp_path / "params.yaml").write_text("# the user's comment\nsynth:\n  volume: 0  # kept\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "eval.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("commit", "-qm", "project")
    return tmp_path


def test_a_second_loop_exits_at_once_naming_the_holder(repo):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import time
        from llamaduo.cycle import driver
        with driver._lock():
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, cwd=repo)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with pytest.raises(LoopError) as err:
            driver.run("params.yaml")
        assert time.monotonic() - start < 5
        assert f'"pid": {holder.pid}' in str(err.value) and "another `llamaduo loop`" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    with driver._lock():  # the kernel released it with its holder: no stale lock blocks a restart
        pass


def test_a_dirty_tree_is_refused_naming_the_files_and_staged_files_never_reach_a_cycle_commit(repo):
    (repo / "code.py").write_text("x = 2\n")
    (repo / ".env.local").write_text("OPENAI_API_KEY=sk-secret\n")
    git("add", ".env.local")
    (repo / "metrics" / "eval.json").write_text('{"a": 1}')  # the loop's own output: never counts as dirty
    assert sorted(driver._dirty("params.yaml")) == [".env.local", "code.py"]
    with pytest.raises(LoopError, match=r"\.env\.local, code\.py.*--allow-dirty"):
        driver.run("params.yaml")

    sha = driver._commit("llamaduo cycle 0: test", "params.yaml", loop="L1", cycle=0, step="cycle")
    assert git("show", "--name-only", "--format=", sha).split() == ["metrics/eval.json"]
    assert ".env.local" in git("diff", "--cached", "--name-only")  # still staged, still the user's
    assert driver._find_commit("L1", 0, "cycle") == sha
    assert driver._find_commit("L1", 1, "cycle") is None and driver._find_commit("L2", 0, "cycle") is None
    assert driver._find_commit("L1", 0, "promotion") is None
    # an unchanged tree still gets its record: the trailers are what a restart looks for
    again = driver._commit("llamaduo cycle 0: v1 is now 'champion'", "params.yaml", loop="L1", cycle=0, step="promotion")
    assert again != sha and driver._find_commit("L1", 0, "promotion") == again


def test_cycle_params_are_replaced_whole_keeping_comments(repo):
    driver._set_cycle_params("params.yaml", cycle=2, volume=8, previous=[0, 4])
    text = (repo / "params.yaml").read_text()
    assert "# the user's comment" in text and "# kept" in text and "volume: 8" in text and "previous_volumes:" in text
    assert [p.name for p in repo.iterdir() if p.name.startswith(".params.yaml")] == []


@pytest.fixture
def mlflow_db(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    p = MlflowParams(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    tracking.connect(p)
    return p


def test_free_text_metric_names_log_and_a_cut_short_child_is_logged_again(tmp_path, mlflow_db):
    metrics = tmp_path / "m"
    metrics.mkdir()
    reasons = {"provider's content filter": 3, "`json` fence": 1, "a/b..c": 2, "ok": 5}
    (metrics / "eval.json").write_text(json.dumps({"failed_by_reason": reasons, "precision": {"mean": 50.0}}))
    params = tmp_path / "params.yaml"
    params.write_text("judge:\n  note: \"it's `fine`\"\n")
    parent = tracking.start_parent(mlflow_db, resume_id=None, tags={})
    # a child cut short (no DONE tag): deleted, the cycle is logged again in full
    with mlflow.start_run(run_id=parent), mlflow.start_run(nested=True, tags={tracking.CYCLE_TAG: "0"}) as cut:
        pass
    assert tracking.find_cycle_run(parent, 0) is None
    assert mlflow.get_run(cut.info.run_id).info.lifecycle_stage == "deleted"
    child = tracking.log_cycle(parent_id=parent, cycle=0, params_file=str(params), metrics_dir=str(metrics), tags={})
    assert tracking.find_cycle_run(parent, 0) == child and tracking.find_cycle_run(parent, 1) is None
    logged = mlflow.get_run(child).data.metrics
    assert logged["eval.failed_by_reason.ok"] == 5 and logged["eval.precision.mean"] == 50
    odd = {k: v for k, v in logged.items() if k.startswith("eval.failed_by_reason.") and not k.endswith(".ok")}
    assert sorted(odd.values()) == [1, 2, 3] and all("'" not in k and "`" not in k and ".." not in k for k in odd)
    assert tracking.safe_name("eval.x's") != tracking.safe_name("eval.x`s")  # no two names collide


def model_folders(tmp_path) -> dict:
    """A stand-in base (files its fingerprint covers) and adapter: the registry stores and names them, loads neither."""
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    for folder, name in ((base, "config.json"), (adapter, "adapter_config.json")):
        folder.mkdir()
        (folder / name).write_text(json.dumps({"folder": folder.name}))
    return {"adapter_dir": str(adapter), "base_dir": str(base)}


def test_one_version_per_run_and_a_repeated_promotion_is_written_once(tmp_path, mlflow_db):
    with mlflow.start_run() as run:
        kw = dict(name="llamaduo-t", base_md5="x", **model_folders(tmp_path))
        v1 = model_registry.log_and_register(**kw, tags={"cycle": 0, "loop": "L", "ci_low": None})
        v2 = model_registry.log_and_register(**kw, tags={"cycle": 0, "loop": "L"})
    assert v1 == v2 == "1"
    assert model_registry.version_of_run("llamaduo-t", run.info.run_id) == "1"
    mv = mlflow.MlflowClient().get_model_version("llamaduo-t", "1")
    fp = weights.fingerprint(kw["base_dir"])
    assert mv.tags == {"cycle": "0", "loop": "L", "base_fingerprint": fp}  # created with the version; None is no tag
    for _ in range(2):
        model_registry.promote("llamaduo-t", "1", alias="champion", reason="gate, cycle 0: passes")
    assert [h["version"] for h in model_registry.history("llamaduo-t")] == ["1"]


def test_the_merge_scratch_folder_is_emptied_only_when_it_is_ours(tmp_path):
    precious = tmp_path / ".llamaduo"
    precious.mkdir()
    (precious / "calls.sqlite").write_text("paid answers")
    with pytest.raises(ParamsError, match=r"`merge.work_dir` .* holds files llamaduo did not write \(calls.sqlite\)"):
        scratch(precious)
    assert (precious / "calls.sqlite").read_text() == "paid answers"
    work = scratch(tmp_path / "merge")
    (work / "sub-0").mkdir()
    assert [p.name for p in scratch(work).iterdir()] == [".llamaduo-scratch"]  # ours: emptied again


def test_a_model_folder_is_replaced_whole_and_a_killed_writer_leaks_nothing(tmp_path):
    out = tmp_path / "models" / "adapter"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    leaked = tmp_path / "models" / f".adapter-tmp-{dead}-abc"
    leaked.mkdir(parents=True)
    with atomic.replacing_dir(out) as tmp:
        (tmp / "a").write_text("1")
    assert not leaked.exists() and (out / "a").read_text() == "1"
    with pytest.raises(RuntimeError), atomic.replacing_dir(out) as tmp:
        (tmp / "b").write_text("half")
        raise RuntimeError("killed")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["adapter"] and (out / "a").exists()
    assert subprocess.run(["git", "check-ignore", "-q", "--no-index", "models/.adapter-tmp-1-x/"], cwd=Path(__file__).parents[2],
                          capture_output=True).returncode == 0


def test_the_loop_has_a_push_switch():
    assert Params.model_validate({}).loop.push is True


def test_a_kill_between_the_two_renames_puts_the_old_folder_back(tmp_path):
    out = tmp_path / "models" / "adapter"
    with atomic.replacing_dir(out) as tmp:
        (tmp / "a").write_text("old")
    write_new = f"from llamaduo import atomic\nwith atomic.replacing_dir({str(out)!r}) as tmp:\n    (tmp / 'a').write_text('new')\n"
    killed = subprocess.run([sys.executable, "-c", write_new], env=os.environ | {faults.ENV: "atomic:between_renames"})
    assert killed.returncode == -signal.SIGKILL and not out.exists()  # the window: old copy parked, new one not in place
    with pytest.raises(RuntimeError), atomic.replacing_dir(out):  # the next writer fails: the old folder is back all the same
        raise RuntimeError("killed")
    assert (out / "a").read_text() == "old" and [p.name for p in out.parent.iterdir()] == ["adapter"]
    with atomic.replacing_dir(out) as tmp:
        (tmp / "a").write_text("newer")
    assert (out / "a").read_text() == "newer" and [p.name for p in out.parent.iterdir()] == ["adapter"]


def test_an_unrecorded_parent_run_is_adopted_and_a_cycle_logged_again_keeps_one_parent_point(tmp_path, mlflow_db):
    parent = tracking.start_parent(mlflow_db, resume_id=None, key="k1", tags={})
    assert tracking.start_parent(mlflow_db, resume_id=None, key="k1", tags={}) == parent  # found by its key, not made twice
    assert tracking.start_parent(mlflow_db, resume_id=None, key="k2", tags={}) != parent
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "eval.json").write_text(json.dumps({"precision": {"mean": 50.0}}))
    (tmp_path / "params.yaml").write_text("synth:\n  volume: 0\n")
    client = mlflow.MlflowClient()
    for attempt in range(2):  # a kill after the parent's points, before the child's done tag: the cycle is logged again
        assert tracking.find_cycle_run(parent, 0) is None
        child = tracking.log_cycle(parent_id=parent, cycle=0, params_file=str(tmp_path / "params.yaml"),
                                   metrics_dir=str(metrics), tags={}, at_ms=1_700_000_000_000)
        if attempt == 0:
            client.delete_tag(child, tracking.DONE_TAG)
    assert tracking.find_cycle_run(parent, 0) == child
    (metrics / "eval.json").write_text(json.dumps({"precision": {"mean": 70.0}}))
    tracking.log_cycle(parent_id=parent, cycle=1, params_file=str(tmp_path / "params.yaml"), metrics_dir=str(metrics),
                       tags={}, at_ms=1_700_000_100_000)
    points = client.get_metric_history(parent, "eval.precision.mean")
    assert sorted((m.step, m.value) for m in points) == [(0, 50.0), (1, 70.0)]
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent}'", output_format="list")
    assert sorted(r.data.tags[tracking.CYCLE_TAG] for r in children) == ["0", "1"]


def test_a_model_logged_but_not_registered_is_registered_not_logged_again(tmp_path, mlflow_db):
    kw = dict(name="llamaduo-t", base_md5="x", tags={"cycle": 0}, **model_folders(tmp_path))
    with mlflow.start_run() as run:
        pass
    register = textwrap.dedent(f"""
        import mlflow
        from llamaduo.config import MlflowParams
        from llamaduo.cycle import model_registry, tracking
        tracking.connect(MlflowParams(tracking_uri={mlflow_db.tracking_uri!r}))
        with mlflow.start_run(run_id={run.info.run_id!r}):
            model_registry.log_and_register(**{kw!r})
    """)
    killed = subprocess.run([sys.executable, "-c", register], env=os.environ | {faults.ENV: "registry:model_logged"},
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    client = mlflow.MlflowClient()
    logged = client.search_logged_models(experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert len(logged) == 1 and client.search_model_versions("name = 'llamaduo-t'") == []
    with mlflow.start_run(run_id=run.info.run_id):
        assert model_registry.log_and_register(**kw) == "1"
    again = client.search_logged_models(experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert [m.model_id for m in again] == [logged[0].model_id]
    assert client.get_model_version("llamaduo-t", "1").source == f"models:/{logged[0].model_id}"
