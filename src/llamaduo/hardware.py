"""What machine a figure came from: CPU model and the instruction-set flags that decide which dtype is fast
(AVX2/FMA, AVX-512, AVX512-BF16, AMX), core count, and the GPU if there is one. The CPU varies between
machines of one kind, so every published figure records this beside it."""

from __future__ import annotations

import glob
import os
import platform
import sys
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

# the flags that change which kernels (and so which dtype) run fast
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
# a CPU with one of these runs bf16 matmuls natively (oneDNN kernels); without them torch and vLLM emulate
# bf16, so it is the slow dtype there
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
DTYPES = ("bfloat16", "float32")


@lru_cache(maxsize=1)
def cpu() -> dict:
    """{"model", "flags"} from /proc/cpuinfo (Linux); the platform's processor string elsewhere."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                if model and flags and key == "":
                    break
    except OSError:
        pass
    return {"model": model, "flags": relevant(flags)}


def relevant(flags: Iterable[str]) -> list[str]:
    """The flags of RELEVANT_FLAGS among `flags`, in RELEVANT_FLAGS' order."""
    present = set(flags)
    return [f for f in RELEVANT_FLAGS if f in present]


# -- runtime libraries a CPU process can preload (LD_PRELOAD): vLLM's CPU engine and the train stage

# where Debian puts libtcmalloc_minimal, and where the intel-openmp wheel puts libiomp5 (the venv's lib/)
_TCMALLOC_GLOBS = ("/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4",
                   "/usr/lib64/libtcmalloc_minimal.so.4")


def tcmalloc() -> str | None:
    """Path of tcmalloc (Debian's libtcmalloc-minimal4, scripts/setup.sh installs it), or None."""
    for pattern in _TCMALLOC_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def iomp() -> str | None:
    """Path of Intel OpenMP (PyPI `intel-openmp`), or None."""
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        lib = Path(prefix) / "lib" / "libiomp5.so"
        if lib.is_file():
            return str(lib)
    return None


def preload_env(libs, base: dict | None = None) -> dict[str, str]:
    """{"LD_PRELOAD": ...} putting the found `libs` (paths or None) ahead of what `base` (default os.environ)
    preloads already; {} when there is nothing to add (none found, or all there)."""
    base = os.environ if base is None else base
    current = [p for p in base.get("LD_PRELOAD", "").split(":") if p]
    new = [lib for lib in libs if lib and lib not in current]
    return {"LD_PRELOAD": ":".join(new + current)} if new else {}


def describe() -> dict:
    """The machine, for a benchmark's JSON: CPU model and flags, cores, GPU (None without one)."""
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    info = cpu()
    return {"cpu_model": info["model"], "cpu_flags": info["flags"], "cores": os.cpu_count(), "arch": platform.machine(),
            "gpu": gpu}


def _cuda_bf16() -> bool | None:
    """True/False for a CUDA GPU's bf16 support; None without a GPU (or torch)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return bool(torch.cuda.is_bf16_supported())


def compute_dtype(override: str = "auto", flags: Iterable[str] | None = None) -> dict:
    """The one decision of the compute dtype, for training, merging, the validation loss and vLLM (engine and
    server): bf16 on a CUDA GPU that has it and on CPUs with AVX512-BF16 or AMX, fp32 otherwise.

    Returns {"dtype": "bfloat16" | "float32", "source": why, "cpu_flags": the flags it read}, so each stage's
    metrics record the choice beside what it came from. `override` ("bfloat16" / "float32", from params)
    wins over the hardware. `flags` (CPU flag names) decides for a CPU with those flags instead of this
    machine, GPU left out: the same decision for a machine one is not on.
    """
    given = flags is not None
    flags = relevant(flags) if given else cpu()["flags"]
    if override != "auto":
        if override not in DTYPES:
            raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {override!r}")
        return {"dtype": override, "source": "params", "cpu_flags": flags}
    gpu = None if given else _cuda_bf16()
    if gpu is not None:
        return {"dtype": "bfloat16" if gpu else "float32", "source": "cuda" if gpu else "cuda without bf16", "cpu_flags": flags}
    native = [f for f in BF16_FLAGS if f in flags]
    if native:
        return {"dtype": "bfloat16", "source": f"cpu: {'+'.join(native)}", "cpu_flags": flags}
    return {"dtype": "float32", "source": "cpu: no avx512_bf16/amx_bf16 (bf16 would be emulated)", "cpu_flags": flags}


def torch_dtype(override: str = "auto"):
    """`compute_dtype` as a torch dtype."""
    import torch

    return getattr(torch, compute_dtype(override)["dtype"])
