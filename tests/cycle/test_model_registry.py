import json
from pathlib import Path

import mlflow
import pytest

from llamaduo.config import MlflowParams
from llamaduo.cycle import model_registry as registry
from llamaduo.cycle import tracking
from llamaduo.errors import UserError
from llamaduo.weights import fingerprint


@pytest.fixture
def name(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # this test's own cache of fetched bases
    tracking.connect(MlflowParams(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    adapter, base = tmp_path / "adapter", tmp_path / "base"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    base.mkdir()  # a stand-in: the files the fingerprint covers (the registry stores the base, never loads it here)
    (base / "config.json").write_text('{"model_type": "llama"}')
    (base / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    for cycle in range(3):
        with mlflow.start_run():
            registry.log_and_register(name="llamaduo-t", adapter_dir=str(adapter), base_dir=str(base), base_md5="x",
                                      tags={"cycle": cycle, "ci_low": 50 + cycle})
    return "llamaduo-t"


def test_promote_and_rollback_keep_a_reasoned_history(name):
    assert registry.champion(name, "champion") is None
    registry.promote(name, "1", alias="champion", reason="gate")
    registry.promote(name, "3", alias="champion", reason="by hand: hotfix")
    champ = registry.champion(name, "champion")
    assert champ["version"] == "3" and champ["promotion_reason"] == "by hand: hotfix" and champ["cycle"] == "2"
    assert registry.rollback(name, alias="champion", reason="regression in prod") == "1"
    assert registry.champion(name, "champion")["version"] == "1"
    hist = registry.history(name)
    assert [h["action"] for h in hist] == ["promote", "rollback"] and hist[-1]["reason"] == "regression in prod"
    assert registry.rollback(name, alias="champion", reason="none left") is None
    assert registry.champion(name, "champion") is None
    with pytest.raises(UserError, match="no 'champion' alias"):
        registry.rollback(name, alias="champion", reason="x")


def test_promote_unknown_version_fails(name):
    with pytest.raises(UserError, match="cannot promote llamaduo-t v99"):
        registry.promote(name, "99", alias="champion", reason="x")
    assert registry.champion(name, "champion") is None


def test_champion_file_holds_numbers_and_no_absent_figures(name, tmp_path):
    """The gate reads metrics/champion.json: figures as numbers, an absent interval absent (never "None")."""
    out = tmp_path / "champion.json"
    assert registry.save_champion(name, "champion", out) == {} and json.loads(out.read_text()) == {}
    registry.promote(name, "2", alias="champion", reason="gate")
    assert registry.save_champion(name, "champion", out) == {"version": "2", "cycle": 1, "ci_low": 51.0}
    assert json.loads(out.read_text()) == {"version": "2", "cycle": 1, "ci_low": 51.0}


def test_champion_file_keeps_the_champions_per_prompt_scores_of_its_gate_metric(name, tmp_path):
    """At promotion champion.json takes the per-prompt scores the champion's cycle run logged (the gate pairs the
    next candidates with them), only when they are of the metric the champion was gated on."""
    from llamaduo.reporting.gate import PROMPT_SCORES

    client = mlflow.MlflowClient()
    out = tmp_path / "champion.json"
    run_id = client.get_model_version(name, "2").run_id
    client.log_dict(run_id, {"metric": "rouge_l", "scores": {"p1": 20.5, "p2": 31}}, PROMPT_SCORES)
    registry.promote(name, "2", alias="champion", reason="gate")
    # the version records no metric: scores of rouge_l are not taken as its gate's
    assert "scores" not in registry.save_champion(name, "champion", out)
    client.set_model_version_tag(name, "2", "metric", "rouge_l")
    assert json.loads(out.read_text()) == {"version": "2", "cycle": 1, "ci_low": 51.0}
    want = {"version": "2", "cycle": 1, "ci_low": 51.0, "metric": "rouge_l", "scores": {"p1": 20.5, "p2": 31.0}}
    assert registry.save_champion(name, "champion", out) == want and json.loads(out.read_text()) == want
    # a champion whose run logged none (a version from before they were recorded): the interval alone
    client.set_model_version_tag(name, "3", "metric", "rouge_l")
    registry.promote(name, "3", alias="champion", reason="by hand")
    assert registry.save_champion(name, "champion", out) == {"version": "3", "cycle": 2, "ci_low": 52.0, "metric": "rouge_l"}
    with mlflow.start_run():
        version = registry.log_and_register(name=name, adapter_dir=str(tmp_path / "adapter"), base_dir=str(tmp_path / "base"),
                                            base_md5="x", tags={"cycle": 9, "ci_low": None})
    assert "ci_low" not in mlflow.MlflowClient().get_model_version(name, version).tags


def test_flatten():
    assert tracking.flatten({"a": {"b": 1, "c": [2, {"d": 3}]}}) == {"a.b": 1, "a.c.0": 2, "a.c.1.d": 3}


def test_serve_resolves_the_champion_to_its_files(name, tmp_path):
    from llamaduo.cycle.serving import resolve

    registry.promote(name, "2", alias="champion", reason="gate")
    version, folder, base = resolve(name, "champion")
    fp = fingerprint(str(tmp_path / "base"))
    assert version == "2" and (tmp_path / "adapter").name in folder and (Path(folder) / "adapter_config.json").is_file()
    assert base == str(tmp_path / "cache" / "llamaduo" / "base" / fp)  # fetched by content, not the registering path
    assert resolve(name, "3")[0] == "3"


def test_the_base_is_stored_once_per_fingerprint_and_fetched_by_it(name, tmp_path):
    """Three versions, one stored base; a copy cut short while uploading is never used; the registering machine's
    folder moved away, the base comes back from the artifact store, byte for byte; a fingerprint nobody stored is
    refused."""
    client = mlflow.MlflowClient()
    fp = fingerprint(str(tmp_path / "base"))
    assert {client.get_model_version(name, v).tags["base_fingerprint"] for v in ("1", "2", "3")} == {fp}
    exp = mlflow.get_experiment_by_name("llamaduo").experiment_id
    stored = client.search_logged_models(experiment_ids=[exp], filter_string=f"name = '{registry.BASE_MODEL_NAME}'")
    assert [m.tags[registry.BASE_TAG] for m in stored] == [fp] and registry._bases(fp)[0].model_id == stored[0].model_id
    # an upload cut short (never set ready): not taken for the base, which is logged in full beside it
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "other"}')
    cut = client.create_logged_model(exp, name=registry.BASE_MODEL_NAME, tags={registry.BASE_TAG: fingerprint(str(other))})
    assert registry._bases(fingerprint(str(other))) == []
    assert registry.store_base(other, experiment_id=exp) == fingerprint(str(other))
    (again,) = registry._bases(fingerprint(str(other)))
    assert again.model_id != cut.model_id

    original = {f.name: f.read_bytes() for f in (tmp_path / "base").iterdir()}
    (tmp_path / "base").rename(tmp_path / "gone")
    got = registry.fetch_base(fp)
    assert {f.name: f.read_bytes() for f in got.iterdir()} == original and fingerprint(str(got)) == fp
    with pytest.raises(UserError, match="base model 0000000000000000 is not in the artifact store"):
        registry.fetch_base("0" * 16)
