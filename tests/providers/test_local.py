"""The local provider's shared server: one start per cycle across stage processes, a dead or unhealthy server
replaced, stopped by `llamaduo run` and by the idle watchdog; and the vLLM command line (dtype, parallelism).

The lifecycle tests run a real HTTP server process in place of vLLM (`python -m http.server` serving a file named
`health`, so GET /health answers 200): the same process, port, pid and signal handling, started in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import wait_for
from llamaduo import vllm_cpu
from llamaduo.atomic import pid_alive as alive
from llamaduo.config import Params, VllmEngine
from llamaduo.cycle import serving
from llamaduo.hardware import compute_dtype
from llamaduo.inference.engines import vllm_kwargs
from llamaduo.providers import local
from llamaduo.providers.local import LocalVLLMProvider, ServerState, starts, stop_all
from llamaduo.services import services


def test_two_stage_processes_share_one_server(fake, tmp_path):
    make, state_dir, script, model = fake
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    # two "stages" at once: the file lock makes the second wait for the first's start, then use it
    procs = [subprocess.Popen([sys.executable, str(script), str(model), str(tmp_path / "www"), str(state_dir), "1"],
                              stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1]  # same port, same pid
    assert len(starts(state_dir)) == 1
    st = next(iter(state_dir.glob("*.json")))
    state = json.loads(st.read_text())
    assert state["users"] == [] and state["pid"] == outs[0]["pid"] and state["model"] == str(model)
    assert alive(state["pid"])  # outlives the stages that used it, for the cycle's next stage
    assert stop_all(state_dir) == 1
    assert wait_for(lambda: not alive(state["pid"]))
    assert not st.exists()


def test_a_dead_or_unhealthy_server_is_replaced(fake):
    make, state_dir, _, _ = fake
    first = make()
    first.start()
    pid1 = first._state.read()["pid"]
    os.killpg(pid1, signal.SIGKILL)
    assert wait_for(lambda: not alive(pid1))
    second = make()
    second.start()
    st = second._state.read()
    assert st["pid"] != pid1 and alive(st["pid"]) and len(starts(state_dir)) == 2
    assert local.healthy(st["host"], st["port"])
    # alive but not answering /health (a hung server): stopped and replaced
    local._kill_group(st["pid"])  # the state file is about to name another process: this server would be orphaned
    hung = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    second._state.write(dict(st, pid=hung.pid, port=1))
    third = make()
    third.start()
    assert hung.wait(timeout=40) is not None  # stopped (SIGTERM to its group)
    assert third._state.read()["pid"] not in (hung.pid, st["pid"]) and len(starts(state_dir)) == 3


def test_idle_watchdog_stops_the_server_only_when_no_stage_uses_it(fake):
    make, state_dir, _, _ = fake
    prov = make(idle_timeout_s=1.0)
    prov.start()
    state = prov._state
    pid = state.read()["pid"]
    time.sleep(2.5)  # in use (this process is a live user): the watchdog leaves it
    assert alive(pid) and state.path.exists()
    prov.__exit__(None, None, None)
    assert wait_for(lambda: not alive(pid), timeout=20)
    assert wait_for(lambda: not state.path.exists(), timeout=5)


def test_llamaduo_run_stops_the_shared_server(fake, tmp_path):
    from llamaduo import cli

    make, state_dir, _, _ = fake
    prov = make()
    prov.start()
    pid = prov._state.read()["pid"]
    prov.__exit__(None, None, None)
    (tmp_path / "params.yaml").write_text("{}\n")
    # `dvc repro` fails here (no DVC project): the server is stopped all the same
    rc = cli.main(["--params", str(tmp_path / "params.yaml"), "run", "no-such-stage"])
    assert rc != 0
    assert wait_for(lambda: not alive(pid))
    assert list(state_dir.glob("*.json")) == []


def test_server_key_separates_models_and_settings():
    key = _local().server_key()
    assert key == _local(idle_timeout_s=5).server_key()  # the watchdog's timeout is no new server
    assert key != _local(max_model_len=2048).server_key()
    assert key != _local(cpu_preload=False).server_key()
    # explicit dtypes: `auto` is float32 on one CPU and bfloat16 on another, so only these two must differ
    assert _local(compute="float32").server_key() != _local(compute="bfloat16").server_key()


def _local(**server) -> LocalVLLMProvider:
    compute = server.pop("compute", "auto")
    p = Params.model_validate({"compute": {"dtype": compute},
                               "providers": {"service": {"kind": "local", "model": "models/base", "server": server}}})
    return LocalVLLMProvider("service", p.providers["service"])


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_server_command_carries_dtype_and_parallelism():
    cmd = _local(compute="bfloat16", tensor_parallel_size=2, data_parallel_size=3).command(8001)
    assert _flag(cmd, "--dtype") == "bfloat16"
    assert _flag(cmd, "--tensor-parallel-size") == "2" and _flag(cmd, "--data-parallel-size") == "3"
    assert _flag(cmd, "--port") == "8001"
    # auto: the one decision for this machine (what it decides on each CPU: tests/test_hardware.py)
    assert _flag(_local().command(1), "--dtype") == compute_dtype()["dtype"]
    # the server's own setting wins over compute.dtype
    assert _flag(_local(compute="bfloat16", dtype="float32").command(1), "--dtype") == "float32"


def test_cache_identity_and_services_follow_the_dtype():
    assert _local(compute="bfloat16").identity().endswith(":bfloat16")
    assert _local(compute="float32").identity().endswith(":float32")
    bf = services(Params.model_validate({"compute": {"dtype": "bfloat16"}}))
    fp = services(Params.model_validate({"compute": {"dtype": "float32"}}))
    assert bf["service"]["server"]["dtype"] == "bfloat16" and fp["service"]["server"]["dtype"] == "float32"
    # runtime knobs stay out: a new idle timeout or parallelism reruns no service stage
    assert {"idle_timeout_s", "tensor_parallel_size", "cpu_preload"}.isdisjoint(bf["service"]["server"])


def test_offline_engine_and_serve_get_dtype_and_parallelism():
    p = Params.model_validate({"infer": {"tensor_parallel_size": 2, "data_parallel_size": 4}})
    kw = vllm_kwargs("/m", p.infer, "float32")
    assert (kw["dtype"], kw["tensor_parallel_size"], kw["data_parallel_size"]) == ("float32", 2, 4)
    assert kw["model"] == "/m" and kw["enforce_eager"] is True
    s = Params.model_validate({"serve": {"tensor_parallel_size": 2, "data_parallel_size": 2}}).serve
    cmd = serving.command("/m", name="x", host="127.0.0.1", port=9, p=s, extra=[], dtype="bfloat16")
    assert _flag(cmd, "--dtype") == "bfloat16" and _flag(cmd, "--tensor-parallel-size") == "2"
    assert _flag(cmd, "--data-parallel-size") == "2"
    # serve's engine gets the CPU settings every vLLM engine of the project gets
    served = serving.env(Params.model_validate({"serve": {"cpu_kvcache_gib": 2}}).serve, base={"PATH": "/bin"})
    assert served["PATH"] == "/bin"
    if not vllm_cpu.on_gpu():
        assert served["VLLM_CPU_KVCACHE_SPACE"] == "2" and served["VLLM_CPU_OMP_THREADS_BIND"] != "auto"
    ray = Params.model_validate({"serve": {"distributed_executor_backend": "ray"}}).serve
    assert _flag(serving.command("/m", name="x", host="h", port=9, p=ray, extra=[]), "--distributed-executor-backend") == "ray"


@pytest.mark.skipif(vllm_cpu.on_gpu(), reason="CPU settings only")
def test_cpu_env_preloads_and_kv_cache():
    env = vllm_cpu.env(VllmEngine(cpu_preload=True, cpu_kvcache_gib=2, cpu_threads_bind="0-1"), base={"LD_PRELOAD": "/x/other.so"})
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    missing = vllm_cpu.missing_preloads()
    if missing:  # without them this test would check nothing; scripts/setup.sh installs both
        pytest.fail(f"the CPU preload libraries are not installed: {', '.join(missing)} (scripts/setup.sh installs them)")
    assert env["LD_PRELOAD"].split(":") == [vllm_cpu.tcmalloc(), vllm_cpu.iomp(), "/x/other.so"]  # ours first, theirs kept
    assert all(Path(lib).is_file() for lib in env["LD_PRELOAD"].split(":")[:2])
    again = vllm_cpu.env(VllmEngine(cpu_preload=True, cpu_threads_bind="auto"), base={"LD_PRELOAD": env.get("LD_PRELOAD", "")})
    assert "LD_PRELOAD" not in again and "VLLM_CPU_KVCACHE_SPACE" not in again  # nothing added twice
    off = vllm_cpu.env(VllmEngine(cpu_preload=False, cpu_threads_bind="auto"), base={})
    assert off == {"VLLM_CPU_OMP_THREADS_BIND": "auto"}
    # the server's environment gets them; `all` (the default) is every core this process may use
    srv_env = _local(cpu_kvcache_gib=3).env()
    assert srv_env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert srv_env["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(map(str, sorted(os.sched_getaffinity(0))))


def test_all_cores_split_between_the_engines_ranks_and_too_few_name_the_key():
    """vLLM's `auto` keeps one core per rank for its scheduler: on 2 cores the model got one. `all` gives the
    worker(s) every core, one contiguous share per rank (tensor x data parallel); other values are vLLM's."""
    from llamaduo.errors import ParamsError

    assert vllm_cpu.bind_list("all", 1, cores=[0, 1]) == "0,1"
    assert vllm_cpu.bind_list("all", 2, cores=[3, 0, 1, 2, 4]) == "0,1|2,3"  # the fifth core left over
    assert vllm_cpu.bind_list("auto", 4) == "auto" and vllm_cpu.bind_list("0-3|4-7", 2) == "0-3|4-7"
    with pytest.raises(ParamsError, match="`cpu_threads_bind: all` splits 2 core"):
        vllm_cpu.bind_list("all", 4, cores=[0, 1])
    env = vllm_cpu.env(VllmEngine(cpu_preload=False, cpu_threads_bind="all"), base={})
    if not vllm_cpu.on_gpu():
        assert env["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(map(str, sorted(os.sched_getaffinity(0))))


def test_state_lock_is_exclusive_across_processes(tmp_path):
    st = ServerState("k", tmp_path)
    code = ("import fcntl,sys; fh=open(sys.argv[1],'a')\n"
            "try:\n fcntl.flock(fh, fcntl.LOCK_EX|fcntl.LOCK_NB); print('got')\nexcept BlockingIOError: print('busy')")
    with st.locked():
        out = subprocess.run([sys.executable, "-c", code, str(st.lock_path)], capture_output=True, text=True).stdout
    assert out.strip() == "busy"
    out = subprocess.run([sys.executable, "-c", code, str(st.lock_path)], capture_output=True, text=True).stdout
    assert out.strip() == "got"


SENTINEL = "sk-SENTINEL-4f9a1c"
VENDOR_VARS = ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "AZURE_OPENAI_API_KEY",
               "AZURE_CLIENT_SECRET", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MISTRAL_API_KEY"]


def test_the_vllm_child_gets_no_vendor_key(monkeypatch):
    for name in VENDOR_VARS:
        monkeypatch.setenv(name, SENTINEL)
    monkeypatch.setenv("LLAMADUO_KEEP_ME", "1")
    env = _local(threads=1).env()
    assert SENTINEL not in json.dumps(env)
    assert not set(VENDOR_VARS) & set(env)
    # the rest of the environment is inherited (paths, the settings vLLM needs)
    assert env["LLAMADUO_KEEP_ME"] == "1" and env["PATH"] == os.environ["PATH"] and env["OMP_NUM_THREADS"] == "1"
    assert local.child_env({"AWS_ACCESS_KEY_ID": "id", "HOME": "/h", "openai_api_key": "x"}) == {"AWS_ACCESS_KEY_ID": "id", "HOME": "/h"}
