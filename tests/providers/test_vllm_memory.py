"""vLLM's memory: the shared server never outlives the DVC run whose stages used it, a start refused for memory
names who holds the memory, and on CPU the KV cache is sized from the model and the batch, not from the RAM.

As in test_local.py, a plain HTTP server stands in for vLLM (same process, pid, port and signals)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import wait_for
from llamaduo import vllm_cpu
from llamaduo.atomic import pid_alive
from llamaduo.config import Params
from llamaduo.errors import ProviderError
from llamaduo.inference.engines import vllm_kwargs
from llamaduo.providers import local

# what a DVC process does for each stage: run its command in a shell with DVC_STAGE set, then go on (here: wait
# HOLD seconds, as if a later stage were running) and exit
RUNNER = textwrap.dedent("""
    import os, subprocess, sys, time
    cmd, hold = sys.argv[1], float(sys.argv[2])
    out = subprocess.run(["sh", "-c", cmd], env=dict(os.environ, DVC_STAGE="judge"), check=True,
                         capture_output=True, text=True).stdout
    print(out, flush=True)
    time.sleep(hold)
""")



def test_the_server_stops_when_the_dvc_run_that_used_it_ends(fake, tmp_path):
    make, state_dir, script, model = fake
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    stage = f"{sys.executable} {script} {model} {tmp_path / 'www'} {state_dir} 0"
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, stage, "6"], env=env, stdout=subprocess.PIPE, text=True)
    served = json.loads(runner.stdout.readline())
    state = json.loads(next(state_dir.glob("*.json")).read_text())
    assert state["pid"] == served["pid"] and state["sessions"] == [runner.pid]
    assert state["idle_timeout_s"] == 900  # idle time alone would keep it for 15 minutes
    # the stage has released it, but its run goes on: a later stage may use it, so it stays
    time.sleep(4)
    assert pid_alive(served["pid"])
    runner.wait(timeout=30)
    assert wait_for(lambda: not pid_alive(served["pid"]), timeout=20)
    assert wait_for(lambda: not list(state_dir.glob("*.json")), timeout=10)


def test_outside_dvc_a_stage_records_no_session(fake):
    make, state_dir, _, _ = fake
    prov = make()
    prov.start()
    try:
        assert "sessions" not in prov._state.read() or prov._state.read()["sessions"] == []
    finally:
        prov.__exit__(None, None, None)
        local.stop_all(state_dir)


@pytest.fixture
def lingering_server():
    """A process group that looks like one of our servers (its command line) and holds 300 MiB."""
    hold = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); import time; time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", hold, "vllm.entrypoints.openai.api_server", "--served-model-name",
                             local.SERVED_NAME], start_new_session=True)
    time.sleep(1.5)  # the pages are touched
    yield proc
    proc.kill()
    proc.wait()


def test_a_start_refused_for_memory_names_who_holds_it(fake, lingering_server, tmp_path):
    make, state_dir, _, _ = fake
    prov = make()
    # the refusal vLLM's CPU worker prints, then exits
    refusal = ("ValueError: Available memory on node 0 (2.82/23.54 GiB) on startup is less than desired CPU memory "
               "utilization (0.3, 7.06 GiB).")
    prov.command = lambda port: [sys.executable, "-c", f"import sys; print({refusal!r}); sys.exit(1)"]
    with pytest.raises(ProviderError) as err:
        prov.start()
    text = str(err.value)
    assert "the memory is held by" in text
    lines = text.split("the memory is held by")[1].splitlines()[1:]
    ours = [i for i, line in enumerate(lines) if "llamaduo's shared vLLM server" in line]
    # llamaduo's servers come first (this one, and any other running on the machine), then the rest by size
    assert ours and ours == list(range(len(ours)))
    line = next(line for line in lines if f"pid {lingering_server.pid}:" in line)
    assert "llamaduo's shared vLLM server" in line
    assert "llamaduo stop" in line and f"kill -TERM -{lingering_server.pid}" in line
    size = float(line.split(", ")[1].split(" GiB")[0])
    assert 0.25 <= size <= 1.0


def test_other_failures_do_not_list_processes(fake):
    make, _, _, _ = fake
    prov = make()
    prov.command = lambda port: [sys.executable, "-c", "import sys; print('no such model'); sys.exit(1)"]
    with pytest.raises(ProviderError) as err:
        prov.start()
    assert "no such model" in str(err.value) and "held by" not in str(err.value)


SMOLLM2_135M = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
                "hidden_size": 576}


@pytest.mark.skipif(vllm_cpu.on_gpu(), reason="CPU sizing only")
def test_the_cpu_kv_cache_is_sized_from_the_model_and_the_batch(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_135M))
    per_token_bf16 = 2 * 30 * 3 * 64 * 2  # K and V, per layer and KV head
    # the offline engine: the stage's prompts at once, each up to infer.max_model_len (2048)
    infer = Params.model_validate({}).infer
    kw = vllm_kwargs(str(tmp_path), infer, "bfloat16", requests=16)
    assert kw["kv_cache_memory_bytes"] == per_token_bf16 * 16 * 2048 == 754_974_720  # 0.7 GiB, not 30% of the RAM
    assert vllm_kwargs(str(tmp_path), infer, "float32", requests=16)["kv_cache_memory_bytes"] == 2 * 754_974_720
    # the shared server: the provider's concurrency at once, each up to server.max_model_len
    p = Params.model_validate({"compute": {"dtype": "bfloat16"}, "providers": {"service": {
        "kind": "local", "model": str(tmp_path), "concurrency": 16, "server": {"max_model_len": 4096}}}})
    cmd = local.LocalVLLMProvider("service", p.providers["service"]).command(1)
    assert int(cmd[cmd.index("--kv-cache-memory-bytes") + 1]) == per_token_bf16 * 16 * 4096
    # a size the user fixed wins (vLLM's own variable), and a Hub id is vLLM's to size
    fixed = Params.model_validate({"infer": {"cpu_kvcache_gib": 2}}).infer
    assert "kv_cache_memory_bytes" not in vllm_kwargs(str(tmp_path), fixed, "bfloat16", requests=16)
    assert vllm_cpu.env(fixed)["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert "kv_cache_memory_bytes" not in vllm_kwargs("HuggingFaceTB/SmolLM2-135M-Instruct", infer, "bfloat16")
