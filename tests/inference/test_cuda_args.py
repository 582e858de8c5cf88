"""The CUDA paths of infer and serve, as far as a CPU takes them. vLLM's CUDA build cannot travel to the GPU
machine a session may be lent (it is far over what a call carries), so nothing there runs vLLM: here, with torch
told it has a bf16 GPU (or one without bf16), the arguments llamaduo gives vLLM's offline engine, the local service
server and `llamaduo serve` are built and then read back by vLLM's own `EngineArgs` and `vllm serve` parser: the
dtype the GPU gets, tensor and data parallelism, the executor, and no CPU settings (thread binding, preloads)."""

import pytest
import torch

from llamaduo import hardware, vllm_cpu
from llamaduo.config import Params
from llamaduo.cycle import serving
from llamaduo.inference.engines import vllm_kwargs
from llamaduo.providers.local import LocalVLLMProvider

vllm_args = pytest.importorskip("vllm.engine.arg_utils", reason="vLLM is not installed")
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args  # noqa: E402
from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: E402

PARALLEL = {"tensor_parallel_size": 2, "data_parallel_size": 2, "distributed_executor_backend": "mp"}


@pytest.fixture
def gpu(monkeypatch):
    """torch reporting a CUDA GPU; `gpu(bf16=False)` one without bf16 (a T4, a V100)."""
    def fake(bf16: bool = True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)

    return fake


def serve_args(cmd: list[str]):
    """vLLM's own reading of a `python -m vllm.entrypoints.openai.api_server ...` command line: its engine args."""
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(cmd[3:])
    validate_parsed_serve_args(args)
    return vllm_args.AsyncEngineArgs.from_cli_args(args)


@pytest.mark.parametrize("bf16,dtype", [(True, "bfloat16"), (False, "float32")])
def test_the_offline_engine_on_a_gpu_gets_its_dtype_and_parallelism_and_no_cpu_settings(gpu, bf16, dtype, tmp_path):
    gpu(bf16)
    p = Params.model_validate({"infer": PARALLEL})
    resolved = hardware.compute_dtype(p.compute.dtype)
    assert (resolved["dtype"], resolved["source"]) == (dtype, "cuda" if bf16 else "cuda without bf16")
    # 4 ranks on this 2-core machine: on a CPU the thread binding refuses them, on a GPU there is none to make
    assert vllm_cpu.env(p.infer) == {}
    # a folder that exists: offline, vLLM resolves a model name that is not one as a Hub id
    engine = vllm_args.EngineArgs(**vllm_kwargs(str(tmp_path), p.infer, resolved["dtype"]))
    assert (engine.model, engine.dtype, engine.tensor_parallel_size, engine.data_parallel_size) == (
        str(tmp_path), dtype, 2, 2)
    assert engine.distributed_executor_backend == "mp" and engine.gpu_memory_utilization == p.infer.gpu_memory_utilization


def test_the_same_params_on_a_cpu_get_the_cpu_settings(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    p = Params.model_validate({"infer": {"tensor_parallel_size": 1, "data_parallel_size": 2}})
    env = vllm_cpu.env(p.infer, base={})
    assert env["VLLM_CPU_OMP_THREADS_BIND"].count("|") == 1  # one core list per rank
    assert hardware.compute_dtype(p.compute.dtype)["source"].startswith("cpu")


def test_the_local_service_server_on_a_gpu(gpu, tmp_path):
    gpu()
    params = Params.model_validate({"providers": {"service": {"kind": "local", "model": str(tmp_path),
                                                              "server": {**PARALLEL, "gpu_memory_utilization": 0.5}}}})
    provider = LocalVLLMProvider("service", params.providers["service"])
    engine = serve_args(provider.command(8123))
    assert (engine.dtype, engine.tensor_parallel_size, engine.data_parallel_size) == ("bfloat16", 2, 2)
    assert (engine.distributed_executor_backend, engine.gpu_memory_utilization, engine.enforce_eager) == ("mp", 0.5, True)
    env = provider.env()
    assert not any(k.startswith("VLLM_CPU_") for k in env)


@pytest.mark.parametrize("bf16,dtype", [(True, "bfloat16"), (False, "float32")])
def test_llamaduo_serve_on_a_gpu(gpu, bf16, dtype, monkeypatch, tmp_path):
    gpu(bf16)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    p = Params.model_validate({"serve": PARALLEL}).serve
    cmd = serving.command(str(tmp_path), name="llamaduo-summarize", host="127.0.0.1", port=8100, p=p, extra=[],
                          dtype=hardware.compute_dtype("auto")["dtype"])
    engine = serve_args(cmd)
    assert (engine.model, engine.dtype, engine.tensor_parallel_size, engine.data_parallel_size) == (
        str(tmp_path), dtype, 2, 2)
    assert engine.gpu_memory_utilization == 0.9  # serve's own share: the GPU is the server's
    env = serving.env(p, base={"PATH": "/usr/bin"})
    assert env == {"PATH": "/usr/bin"}  # no thread binding, no preloads
