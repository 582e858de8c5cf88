"""The machine a figure came from: CPU model and the flags that decide the fast dtype."""

from pathlib import Path

from llamaduo import hardware


def test_describe_names_the_cpu_and_only_the_flags_that_matter():
    d = hardware.describe()
    assert set(d) == {"cpu_model", "cpu_flags", "cores", "arch", "gpu"}
    assert d["cpu_model"] and d["cores"] >= 1 and set(d["cpu_flags"]) <= set(hardware.RELEVANT_FLAGS)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split(":")[1].split()
        assert d["cpu_flags"] == [f for f in hardware.RELEVANT_FLAGS if f in flags]
