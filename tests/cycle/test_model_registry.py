import json
from pathlib import Path

import mlflow
import pytest

from llamaduo.config import MlflowParams
from llamaduo.cycle import model_registry as registry
from llamaduo.cycle import tracking
from llamaduo.errors import UserError


@pytest.fixture
def name(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.connect(MlflowParams(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    for cycle in range(3):
        with mlflow.start_run():
            registry.log_and_register(name="llamaduo-t", adapter_dir=str(adapter), base_dir=str(tmp_path), base_md5="x",
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
    with mlflow.start_run():
        version = registry.log_and_register(name=name, adapter_dir=str(tmp_path / "adapter"), base_dir=str(tmp_path),
                                            base_md5="x", tags={"cycle": 9, "ci_low": None})
    assert "ci_low" not in mlflow.MlflowClient().get_model_version(name, version).tags


def test_flatten():
    assert tracking.flatten({"a": {"b": 1, "c": [2, {"d": 3}]}}) == {"a.b": 1, "a.c.0": 2, "a.c.1.d": 3}


def test_serve_resolves_the_champion_to_its_files(name, tmp_path):
    from llamaduo.cycle.serving import resolve

    registry.promote(name, "2", alias="champion", reason="gate")
    version, folder, base = resolve(name, "champion")
    assert version == "2" and (tmp_path / "adapter").name in folder
    assert (Path(folder) / "adapter_config.json").is_file() and base == str(tmp_path.resolve())
    assert resolve(name, "3")[0] == "3"
