"""The registry behind a real MLflow server, as a team shares one: runs and a cycle's model are logged through the
project's own path over HTTP and promoted. (Loading the champion by alias from another process, through a server,
is in tests/cycle/test_driver_e2e.py, after a real loop.)"""

import json
from pathlib import Path

import mlflow
import pytest

from fakes.mlflow_server import mlflow_server
from llamaduo.config import MlflowParams
from llamaduo.cycle import model_registry as registry
from llamaduo.cycle import tracking
from llamaduo.weights import fingerprint


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module: starting one costs ~20 s here (imports and the database's migrations)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server(root) as uri:
        yield uri, root


@pytest.fixture
def uri(server, monkeypatch, tmp_path):
    uri, _ = server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # so that any stray local store would show up in tmp_path
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # fetched base models: this test's own cache
    yield uri
    mlflow.set_tracking_uri(None)  # the next test must not talk to a server that is gone


def test_runs_and_registry_go_through_the_server(uri, server, tmp_path):
    """tracking.connect with an http:// URI, a loop's parent and cycle runs, a registered version and its
    promotion: every record and file lands in the server's store, nothing on this side."""
    p = MlflowParams(experiment="team")
    parent = tracking.start_parent(p, resume_id=None, tags={"task": "summarize"})
    assert mlflow.get_tracking_uri() == uri and mlflow.get_experiment_by_name("team").artifact_location.startswith("mlflow-artifacts:")
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "eval.json").write_text(json.dumps({"score": 61.5}))
    (tmp_path / "params.yaml").write_text("train:\n  seed: 1\n")
    child = tracking.log_cycle(parent_id=parent, cycle=1, params_file=str(tmp_path / "params.yaml"), metrics_dir=str(metrics), tags={})
    assert tracking.find_cycle_run(parent, 1) == child
    assert mlflow.get_run(child).data.metrics["eval.score"] == 61.5
    adapter, base = tmp_path / "adapter", tmp_path / "base"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 4}')
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "llama"}')
    with mlflow.start_run():
        version = registry.log_and_register(name="llamaduo-t", adapter_dir=str(adapter), base_dir=str(base),
                                            base_md5="x", tags={"cycle": 1, "score": 61.5})
    registry.promote("llamaduo-t", version, alias="champion", reason="gate")
    fp = fingerprint(str(base))
    assert registry.champion("llamaduo-t", "champion") == {"version": "1", "cycle": "1", "score": "61.5",
                                                           "promotion_reason": "gate", "base_fingerprint": fp}
    # the files are the server's: they sit under its --artifacts-destination and come back over HTTP
    _, root = server
    assert [p.read_text() for p in (root / "artifacts").rglob("adapter_config.json")] == ['{"r": 4}']
    from llamaduo.cycle.serving import resolve

    got, folder, base_copy = resolve("llamaduo-t", "champion")
    assert got == "1" and (Path(folder) / "adapter_config.json").read_text() == '{"r": 4}'
    # the base came back over HTTP too, from the server's store (the upload sits under --artifacts-destination)
    assert (Path(base_copy) / "config.json").read_text() == '{"model_type": "llama"}' and fingerprint(base_copy) == fp
    assert [p.read_text() for p in (root / "artifacts").rglob("config.json")] == ['{"model_type": "llama"}']
    assert not (tmp_path / ".llamaduo").exists() and not (tmp_path / "mlruns").exists()
