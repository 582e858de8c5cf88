"""`llamaduo serve`: the champion (base + adapter, merged) behind vLLM's OpenAI-compatible server."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from contextlib import nullcontext

from llamaduo.providers.local import vllm_missing_message


def resolve(name: str, ref: str) -> tuple[str, str, str | None]:
    """(version, adapter or merged-model dir, base dir or None) of `ref`: an alias (e.g. champion) or a version."""
    import mlflow

    client = mlflow.MlflowClient()
    mv = client.get_model_version(name, ref) if ref.isdigit() else client.get_model_version_by_alias(name, ref)
    local = mlflow.artifacts.download_artifacts(f"models:/{name}/{mv.version}")
    conf = mlflow.pyfunc.Model.load(local).flavors["python_function"].get("config", {})  # log_model's model_config
    merged = os.path.join(local, "artifacts", "merged")
    if os.path.isdir(merged):
        return str(mv.version), merged, None
    return str(mv.version), os.path.join(local, "artifacts", "adapter"), conf["base_path"]


def serve(*, name: str, ref: str, host: str, port: int, gpu_memory_utilization: float, extra: list[str]) -> int:
    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError(vllm_missing_message("`llamaduo serve`"))
    from llamaduo.inference import merged_model

    version, folder, base = resolve(name, ref)
    with (merged_model(base, folder) if base else nullcontext(folder)) as model_dir:
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
               "--served-model-name", name, "--host", host, "--port", str(port),
               "--gpu-memory-utilization", str(gpu_memory_utilization), *extra]
        print(f"serving {name} v{version} ({ref}) at http://{host}:{port}/v1 as model {name!r}", file=sys.stderr, flush=True)
        return subprocess.call(cmd)
