"""`llamaduo serve`: the champion (base + adapter, merged) behind vLLM's OpenAI-compatible server."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import nullcontext

from llamaduo import vllm_cpu
from llamaduo.errors import require_vllm
from llamaduo.weights import folded


def resolve(name: str, ref: str) -> tuple[str, str, str | None]:
    """(version, adapter or merged-model dir, base dir or None) of `ref`: an alias (e.g. champion) or a version. The
    base comes by its fingerprint from the tracking server's artifact store (cached), as the registered model loads it."""
    import mlflow

    from llamaduo.cycle.model_registry import BASE_TAG, fetch_base

    client = mlflow.MlflowClient()
    mv = client.get_model_version(name, ref) if ref.isdigit() else client.get_model_version_by_alias(name, ref)
    local = mlflow.artifacts.download_artifacts(f"models:/{name}/{mv.version}")
    conf = mlflow.pyfunc.Model.load(local).flavors["python_function"].get("config", {})  # log_model's model_config
    merged = os.path.join(local, "artifacts", "merged")
    if os.path.isdir(merged):
        return str(mv.version), merged, None
    return str(mv.version), os.path.join(local, "artifacts", "adapter"), str(fetch_base(conf[BASE_TAG]))


def command(model_dir: str, *, name: str, host: str, port: int, p, extra: list[str], dtype: str = "auto") -> list[str]:
    """The `vllm serve` command line for a model folder; `p` is the `serve` params section, `dtype` the
    compute dtype (`hardware.compute_dtype`: bf16 only where the hardware runs it natively)."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
            "--served-model-name", name, "--host", host, "--port", str(port), "--dtype", dtype,
            "--gpu-memory-utilization", str(p.gpu_memory_utilization), "--max-model-len", str(p.max_model_len),
            "--tensor-parallel-size", str(p.tensor_parallel_size), "--data-parallel-size", str(p.data_parallel_size),
            *(["--distributed-executor-backend", p.distributed_executor_backend] if p.distributed_executor_backend else []),
            *p.extra_args, *extra]


def env(p, base: dict | None = None) -> dict[str, str]:
    """The server's environment: `base` (default os.environ) with the CPU settings of `p` (`vllm_cpu.env`)."""
    base = dict(os.environ if base is None else base)
    return base | vllm_cpu.env(p, base=base)


def serve(*, name: str, ref: str, host: str, port: int, p, extra: list[str], dtype: str = "auto") -> int:
    require_vllm("`llamaduo serve`")
    version, folder, base = resolve(name, ref)
    with (folded(base, folder) if base else nullcontext(folder)) as model_dir:
        cmd = command(model_dir, name=name, host=host, port=port, p=p, extra=extra, dtype=dtype)
        print(f"serving {name} v{version} ({ref}) at http://{host}:{port}/v1 as model {name!r}", file=sys.stderr, flush=True)
        return subprocess.call(cmd, env=env(p))
