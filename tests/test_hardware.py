"""The machine a figure came from: CPU model and the flags that decide the fast dtype."""

from pathlib import Path

import pytest

from llamaduo import hardware


def test_describe_names_the_cpu_and_only_the_flags_that_matter():
    d = hardware.describe()
    assert set(d) == {"cpu_model", "cpu_flags", "cores", "arch", "gpu"}
    assert d["cpu_model"] and d["cores"] >= 1 and set(d["cpu_flags"]) <= set(hardware.RELEVANT_FLAGS)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split(":")[1].split()
        assert d["cpu_flags"] == [f for f in hardware.RELEVANT_FLAGS if f in flags]


# the CPUs machines of this kind come with, flags as /proc/cpuinfo spells them (a subset, extras included)
AVX2_ONLY = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi1 bmi2".split()  # AMD EPYC
AMX_XEON = AVX2_ONLY + "avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8".split()
AVX512_BF16_EPYC = AVX2_ONLY + "avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16".split()  # AMD EPYC, no AMX


@pytest.mark.parametrize("flags, dtype, source", [
    (AVX2_ONLY, "float32", "cpu: no avx512_bf16/amx_bf16 (bf16 would be emulated)"),
    (AMX_XEON, "bfloat16", "cpu: avx512_bf16+amx_bf16"),
    (AVX512_BF16_EPYC, "bfloat16", "cpu: avx512_bf16"),
])
def test_the_dtype_decision_on_each_cpu(flags, dtype, source):
    got = hardware.compute_dtype("auto", flags=flags)
    assert (got["dtype"], got["source"]) == (dtype, source)
    assert got["cpu_flags"] == [f for f in hardware.RELEVANT_FLAGS if f in flags]  # only the flags that matter
    # params win on every CPU
    for override in hardware.DTYPES:
        assert hardware.compute_dtype(override, flags=flags) == {"dtype": override, "source": "params",
                                                                  "cpu_flags": got["cpu_flags"]}


def test_this_machine_decides_as_its_flags_say():
    want = hardware.compute_dtype("auto", flags=hardware.cpu()["flags"])
    got = hardware.compute_dtype("auto")
    if got["source"].startswith("cuda"):
        pytest.skip("a CUDA GPU decides here, not the CPU")
    assert got == want


def test_an_unknown_dtype_names_the_choices():
    with pytest.raises(ValueError, match="auto, bfloat16, float32; got 'float16'"):
        hardware.compute_dtype("float16", flags=AVX2_ONLY)
