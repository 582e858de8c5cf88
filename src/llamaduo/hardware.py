"""What machine a figure came from: CPU model and the instruction-set flags that decide which dtype is fast
(AVX2/FMA, AVX-512, AVX512-BF16, AMX), core count, and the GPU if there is one. The CPU varies between
machines of one kind, so every published figure records this beside it."""

from __future__ import annotations

import os
import platform
from functools import lru_cache

# the flags that change which kernels (and so which dtype) run fast
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


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
    return {"model": model, "flags": [f for f in RELEVANT_FLAGS if f in flags]}


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
