import pytest

from llamaduo.config import ParamsError, load_params
from conftest import ROOT


def test_shipped_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.data.tasks == ["summarize"]
    assert p.providers[p.judge.provider].kind == "local"


def test_unknown_key_is_named(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  max_stepz: 3\n")
    with pytest.raises(ParamsError, match=r"`train.max_stepz`: unknown key"):
        load_params(f)


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.1])
def test_ratio_outside_open_interval(tmp_path, ratio):
    f = tmp_path / "params.yaml"
    f.write_text(f"data:\n  train_ratio: {ratio}\n")
    with pytest.raises(ParamsError, match=r"`data.train_ratio`"):
        load_params(f)


def test_stage_refers_to_unknown_provider(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("judge:\n  provider: gpt4o\n")
    with pytest.raises(ParamsError, match=r"`judge.provider` is 'gpt4o'"):
        load_params(f)


def test_openai_compatible_needs_base_url(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("providers:\n  remote:\n    kind: openai_compatible\n    model: m\n")
    with pytest.raises(ParamsError, match="base_url"):
        load_params(f)


def test_not_yaml_and_missing_file(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(f)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")



def test_provider_name_local_is_reserved(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("providers:\n  local:\n    kind: local\n    model: models/base\nsynth:\n  provider: local\njudge:\n  provider: local\n")
    with pytest.raises(ParamsError, match="reserved for the local model"):
        load_params(f)
