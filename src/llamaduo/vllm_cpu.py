"""vLLM's CPU backend settings, shared by the offline engine (inference) and the local server (providers):
the environment its engine process reads at start-up, per vLLM's CPU installation guide ("Performance tips"):

- LD_PRELOAD of tcmalloc (Debian's libtcmalloc-minimal4) and Intel OpenMP (PyPI `intel-openmp`, libiomp5);
  without them vLLM preloads torch's libgomp only (and warns that tcmalloc is missing).
- VLLM_CPU_KVCACHE_SPACE (GiB of KV cache; unset: vLLM sizes it from `gpu_memory_utilization`).
- VLLM_CPU_OMP_THREADS_BIND (which cores the OpenMP threads are pinned to; `auto` = one NUMA node's cores).

On a GPU none of this applies and `env` returns nothing. vLLM's engine runs in processes it spawns (spawn, not
fork, on CPU), so setting these in os.environ before the engine starts reaches them; the server gets them in
its environment.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

# where Debian puts libtcmalloc_minimal, and where the intel-openmp wheel puts libiomp5 (the venv's lib/)
_TCMALLOC_GLOBS = ("/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4",
                   "/usr/lib64/libtcmalloc_minimal.so.4")


def tcmalloc() -> str | None:
    for pattern in _TCMALLOC_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def iomp() -> str | None:
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        lib = Path(prefix) / "lib" / "libiomp5.so"
        if lib.is_file():
            return str(lib)
    return None


def on_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def env(*, preload: bool, kvcache_gib: int | None, threads_bind: str, base: dict | None = None) -> dict[str, str]:
    """The variables to add to the engine's environment on CPU (empty on a GPU). `base` is the environment they
    go into (default os.environ): a library already in its LD_PRELOAD is not added twice."""
    if on_gpu():
        return {}
    base = os.environ if base is None else base
    out = {"VLLM_CPU_OMP_THREADS_BIND": threads_bind}
    if kvcache_gib is not None:
        out["VLLM_CPU_KVCACHE_SPACE"] = str(kvcache_gib)
    if preload:
        current = [p for p in base.get("LD_PRELOAD", "").split(":") if p]
        libs = [lib for lib in (tcmalloc(), iomp()) if lib and lib not in current]
        if libs:
            out["LD_PRELOAD"] = ":".join(libs + current)
    return out


def missing_preloads() -> list[str]:
    """Names of the preload libraries not installed (scripts/setup.sh installs them)."""
    return [name for name, path in (("libtcmalloc-minimal4 (apt)", tcmalloc()), ("intel-openmp (pip)", iomp())) if path is None]
