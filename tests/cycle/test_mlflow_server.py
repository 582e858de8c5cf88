"""The registry behind a real MLflow server, as a team shares one: runs and a cycle's model are logged through the
project's own path over HTTP, promoted, and another process loads the champion by alias and answers a prompt."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from fakes.mlflow_server import mlflow_server
from llamaduo.config import MlflowParams
from llamaduo.cycle import model_registry as registry
from llamaduo.cycle import tracking

# the teammate's side: only the server's URI (in the environment) and the model's registry name
LOAD = """
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
print(json.dumps(list(model.predict(pd.DataFrame({"prompt": ["Summarize: the cat sat on the mat all day."]})))))
"""


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
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 4}')
    with mlflow.start_run():
        version = registry.log_and_register(name="llamaduo-t", adapter_dir=str(adapter), base_dir=str(tmp_path),
                                            base_md5="x", tags={"cycle": 1, "score": 61.5})
    registry.promote("llamaduo-t", version, alias="champion", reason="gate")
    assert registry.champion("llamaduo-t", "champion") == {"version": "1", "cycle": "1", "score": "61.5", "promotion_reason": "gate"}
    # the files are the server's: they sit under its --artifacts-destination and come back over HTTP
    _, root = server
    assert [p.read_text() for p in (root / "artifacts").rglob("adapter_config.json")] == ['{"r": 4}']
    from llamaduo.cycle.serving import resolve

    got, folder, _ = resolve("llamaduo-t", "champion")
    assert got == "1" and (Path(folder) / "adapter_config.json").read_text() == '{"r": 4}'
    assert not (tmp_path / ".llamaduo").exists() and not (tmp_path / "mlruns").exists()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, base_model_dir):
    """A real LoRA adapter on the real base, untrained (B = 0, so it answers as the base does): what training
    saves (adapter weights + config + tokenizer), without spending a training run on it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_model_dir).save_pretrained(out)
    return out


# ~30 s of its own on this machine (the adapter ~9 s; the other process imports torch, folds and generates ~23 s);
# the base fixture is shared with the training and merging tests, so not marked slow
def test_the_champion_loads_by_alias_from_another_process(uri, tmp_path, base_model_dir, adapter):
    tracking.connect(MlflowParams(experiment="team"))
    with mlflow.start_run():
        version = registry.log_and_register(name="llamaduo-summarize", adapter_dir=str(adapter), base_dir=str(base_model_dir),
                                            base_md5="x", tags={"cycle": 1})
    registry.promote("llamaduo-summarize", version, alias="champion", reason="gate")
    done = subprocess.run([sys.executable, "-c", LOAD, "models:/llamaduo-summarize@champion"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "MLFLOW_TRACKING_URI": uri}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    # greedy decoding of the real base (the untrained adapter changes nothing): a real answer, not an empty string
    assert len(answers) == 1 and isinstance(answers[0], str) and len(answers[0].split()) >= 3
