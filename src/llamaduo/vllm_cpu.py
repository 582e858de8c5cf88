"""vLLM's CPU backend settings, shared by the offline engine (inference) and the local server (providers):
the environment its engine process reads at start-up, per vLLM's CPU installation guide ("Performance tips"):

- LD_PRELOAD of tcmalloc (Debian's libtcmalloc-minimal4) and Intel OpenMP (PyPI `intel-openmp`, libiomp5);
  without them vLLM preloads torch's libgomp only (and warns that tcmalloc is missing).
- VLLM_CPU_KVCACHE_SPACE (GiB of KV cache), set only where the user fixed `cpu_kvcache_gib`. Otherwise the engine
  gets `kv_cache_memory_bytes` from `kv_cache_bytes`: what the model's K and V take for the requests the stage sends
  at once, each up to `max_model_len` tokens. Left to itself, vLLM's CPU worker reserves `gpu_memory_utilization`
  of the machine's RAM whatever the model's size (7.5 GB RSS for the 135M model on a 24 GB machine), and refuses
  to start where that share is not free.
- VLLM_CPU_OMP_THREADS_BIND (which cores the OpenMP threads are pinned to; `auto` = one NUMA node's cores, less
  one core per rank that vLLM reserves for its scheduler process). `all` is ours: every core this process may
  use, split evenly between the engine's ranks. On a 2-core machine `auto` leaves the model one core, and `all`
  doubled the offline engine's generation (AMD EPYC: 109.7 against 53.1 tokens/s, bench/infer.py).

On a GPU none of this applies and `env` returns nothing. vLLM's engine runs in processes it spawns (spawn, not
fork, on CPU), so setting these in os.environ before the engine starts reaches them; the server gets them in
its environment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from llamaduo.errors import ParamsError
from llamaduo.hardware import iomp, preload_env, tcmalloc


def on_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def bind_list(value: str, ranks: int = 1, cores: list[int] | None = None) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for `value`: `all` becomes `ranks` contiguous core lists (`0-7|8-15`) over
    `cores` (default: the cores this process may run on); anything else (`auto`, `nobind`, a list) is vLLM's."""
    if value != "all":
        return value
    cores = sorted(os.sched_getaffinity(0) if cores is None else cores)
    if len(cores) < ranks:
        raise ParamsError(f"`cpu_threads_bind: all` splits {len(cores)} core(s) between {ranks} vLLM ranks "
                          "(tensor x data parallel size): fewer cores than ranks")
    per = len(cores) // ranks
    parts = [cores[i * per:(i + 1) * per] for i in range(ranks)]
    return "|".join(",".join(map(str, part)) for part in parts)


def env(engine, base: dict | None = None) -> dict[str, str]:
    """The variables to add to a vLLM engine's environment on CPU (empty on a GPU), from `engine`'s settings (a
    `config.VllmEngine`: infer, a local server, serve). `base` is the environment they go into (default
    os.environ): a library already in its LD_PRELOAD is not added twice."""
    if on_gpu():
        return {}
    base = os.environ if base is None else base
    ranks = engine.tensor_parallel_size * engine.data_parallel_size
    out = {"VLLM_CPU_OMP_THREADS_BIND": bind_list(engine.cpu_threads_bind, ranks)}
    if engine.cpu_kvcache_gib is not None:
        out["VLLM_CPU_KVCACHE_SPACE"] = str(engine.cpu_kvcache_gib)
    if engine.cpu_preload:
        out.update(preload_env((tcmalloc(), iomp()), base))
    return out


def missing_preloads() -> list[str]:
    """Names of the preload libraries not installed (scripts/setup.sh installs them)."""
    return [name for name, path in (("libtcmalloc-minimal4 (apt)", tcmalloc()), ("intel-openmp (pip)", iomp())) if path is None]


def kv_cache_bytes(model_dir: str, dtype: str, tokens: int) -> int:
    """Bytes of KV cache that hold `tokens` tokens of the model in `model_dir` (from its config.json): a K and a V
    vector per layer and KV head, in `dtype`."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)  # a multimodal config nests the language model's
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    width = 4 if dtype == "float32" else 2
    return 2 * cfg["num_hidden_layers"] * cfg.get("num_key_value_heads", heads) * head_dim * width * tokens


def memory_args(engine, model_dir: str, dtype: str, requests: int) -> dict:
    """vLLM engine arguments that size its memory on CPU: a KV cache for `requests` requests at once (the n
    samples of one request share its prompt's blocks), each up to `engine.max_model_len` tokens. Empty on a GPU,
    where `gpu_memory_utilization` is the field's own knob, and where `cpu_kvcache_gib` fixes it (`env`)."""
    if on_gpu() or engine.cpu_kvcache_gib is not None or not (Path(model_dir) / "config.json").is_file():
        return {}  # (no config.json: a Hub id, which vLLM resolves and sizes itself)
    return {"kv_cache_memory_bytes": kv_cache_bytes(model_dir, dtype, max(1, requests) * engine.max_model_len)}
