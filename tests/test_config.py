import pytest

from conftest import ROOT
from llamaduo.config import load_params
from llamaduo.errors import ParamsError


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


def test_a_wrong_kind_or_method_lists_the_registered_names(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("providers:\n  x:\n    kind: openia\n    model: m\nmerge:\n  method: ties\n")
    with pytest.raises(ParamsError) as exc:
        load_params(f)
    text = str(exc.value)
    assert "`providers.x.kind`" in text and "'openai_compatible'" in text and "'gemini'" in text
    assert "`merge.method`" in text and "'parameter_selection'" in text


def test_runtime_knobs_are_marked_and_left_out_of_what_results_depend_on():
    from llamaduo.config import InferParams, Params, ProviderParams, TrainParams, runtime_keys
    from llamaduo.services import services

    assert runtime_keys(TrainParams) == {"threads", "save_steps", "checkpoint_dir", "num_processes", "num_machines",
                                         "machine_rank", "main_process_ip", "main_process_port", "strategy", "cpu_preload",
                                         # how a device runs a step: never the result
                                         "micro_batch_size", "padding_free", "pad_to_multiple_of", "attn_implementation", "liger",
                                         "fused_lm_head", "torch_compile"}
    assert runtime_keys(InferParams) == {"threads", "gpu_memory_utilization", "tensor_parallel_size", "data_parallel_size",
                                         "cpu_preload", "cpu_kvcache_gib", "cpu_threads_bind", "distributed_executor_backend"}
    assert {"concurrency", "rpm", "timeout_s", "max_retries"} <= runtime_keys(ProviderParams)
    assert not {"kind", "model", "base_url", "price", "batch", "native_n"} & runtime_keys(ProviderParams)
    p = Params.model_validate({"providers": {"service": {"kind": "local", "model": "models/base", "concurrency": 3,
                                                         "server": {"port": 9000, "seed": 7}}}})
    q = Params.model_validate({"providers": {"service": {"kind": "local", "model": "models/base", "concurrency": 30,
                                                         "server": {"port": 9001, "seed": 7}}}})
    assert services(p) == services(q) and services(p)["service"]["server"]["seed"] == 7
    r = Params.model_validate({"providers": {"service": {"kind": "local", "model": "models/base", "server": {"seed": 8}}}})
    assert services(r) != services(p)


def test_serve_has_its_own_section(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("serve:\n  port: 8100\n  gpu_memory_utilization: 0.5\n")
    p = load_params(f)
    assert (p.serve.port, p.serve.gpu_memory_utilization, p.serve.host) == (8100, 0.5, "127.0.0.1")
    from llamaduo.cycle.serving import command

    cmd = command("/m", name="llamaduo-x", host="127.0.0.1", port=8100, p=p.serve, extra=["--dtype", "float32"])
    assert cmd[cmd.index("--gpu-memory-utilization") + 1] == "0.5" and cmd[-2:] == ["--dtype", "float32"]


def test_every_key_dvc_tracks_is_set_and_a_missing_one_is_named(tmp_path, monkeypatch):
    from llamaduo.cli import main
    from llamaduo.project.tracked import untracked_keys

    assert untracked_keys(ROOT / "params.yaml", ROOT / "dvc.yaml") == []  # DVC stops on a tracked key params.yaml lacks
    text = (ROOT / "params.yaml").read_text().replace("  target_modules: all-linear\n", "")
    (tmp_path / "params.yaml").write_text(text)
    assert untracked_keys(tmp_path / "params.yaml", ROOT / "dvc.yaml") == ['`train.target_modules` (default: "all-linear")']
    monkeypatch.chdir(ROOT)
    assert main(["--params", str(tmp_path / "params.yaml"), "check"]) == 2
