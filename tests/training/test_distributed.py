"""Training past one process (llamaduo.training.launch) and vLLM's executor param: the relaunch command, the
split of the global batch, the errors that name the key, and one real two-process run on the CPU (gloo)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from llamaduo import tables
from llamaduo.config import Params, TrainParams, load_params
from llamaduo.errors import ParamsError
from llamaduo.inference.engines import vllm_kwargs
from llamaduo.providers.local import LocalVLLMProvider
from llamaduo.training import base_load_kwargs, launch, per_process, plan, rows_read, sft_config, steps_per_epoch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("batch,procs,micro,split", [
    (2, 2, 1, (1, 1)),    # each process one row a step
    (16, 1, 4, (4, 4)),   # 4 micro-batches of 4
    (16, 2, 2, (2, 4)),   # 8 rows each: 4 micro-batches of 2
    (16, 4, 4, (4, 1)),
    (6, 3, 1, (1, 2)),
])
def test_the_global_batch_splits_over_processes_and_the_budget_does_not_change(batch, procs, micro, split):
    p = TrainParams(batch_size=batch, num_processes=procs)
    assert per_process(p, procs, micro) == split
    m, accum = split
    for n_rows in range(1, 60):
        # what transformers computes per process (an epoch is ceil(rows / (micro x processes)) micro-batches, a step
        # `accum` of them) equals the params' global arithmetic, whatever the split
        micro_batches = math.ceil(n_rows / (m * procs))
        assert max(math.ceil(micro_batches / accum), 1) == steps_per_epoch(p, n_rows), n_rows
        for cap in (1, 3, 7):
            # within the first epoch a capped run reads whole steps of the global batch
            read = n_rows if cap >= steps_per_epoch(p, n_rows) else min(n_rows, cap * accum * m * procs)
            assert rows_read(p.model_copy(update={"max_steps": cap}), n_rows) == read


def test_a_batch_that_does_not_split_is_an_error_naming_the_keys(tmp_path):
    with pytest.raises(ValueError, match=r"`train.batch_size` \(3\) must split evenly over `train.num_processes` \(2\)"):
        per_process(TrainParams(batch_size=3), 2, 1)
    with pytest.raises(ValueError, match=r"`train.micro_batch_size` \(3\) must divide"):
        per_process(TrainParams(batch_size=16), 2, 3)
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump({"train": {"num_processes": 2, "batch_size": 3}}))
    with pytest.raises(ParamsError, match="train.num_processes"):
        load_params(f)
    f.write_text(yaml.safe_dump({"train": {"micro_batch_size": 5}}))
    with pytest.raises(ParamsError, match="`train.micro_batch_size` \\(5\\)"):
        load_params(f)
    f.write_text(yaml.safe_dump({"train": {"num_processes": 4, "batch_size": 4, "num_machines": 2}}))
    with pytest.raises(ParamsError, match="`main_process_ip` is required"):
        load_params(f)
    f.write_text(yaml.safe_dump({"train": {"num_processes": 3, "batch_size": 3, "num_machines": 2,
                                           "main_process_ip": "10.0.0.1"}}))
    with pytest.raises(ParamsError, match="multiple of `num_machines`"):
        load_params(f)
    f.write_text(yaml.safe_dump({"train": {"machine_rank": 1}}))
    with pytest.raises(ParamsError, match="`machine_rank` \\(1\\) must be below `num_machines` \\(1\\)"):
        load_params(f)


def test_the_trainer_config_takes_the_plan():
    p = TrainParams(batch_size=8, num_processes=4)
    cpu = plan.decide(p, num_processes=4, lengths=[100], cuda=False)
    cfg = sft_config(p, Path("/tmp/x"), dtype="float32", plan=cpu)
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (cpu.micro_batch_size, cpu.grad_accum)
    assert cpu.micro_batch_size * cpu.grad_accum * 4 == 8
    assert (cfg.use_liger_kernel, cfg.torch_compile) == (False, False)
    assert cfg.pad_to_multiple_of == cpu.pad_to_multiple_of == plan.CPU_PAD_MULTIPLE
    # padding-free batches have no mask to count tokens from: every token counts
    free = plan.Plan(micro_batch_size=2, grad_accum=1, padding_free=True, pad_to_multiple_of=None, attn_implementation="sdpa",
                     liger=True, fused_lm_head=True, torch_compile=True, device="cuda", why="test")
    cfg = sft_config(TrainParams(batch_size=2), Path("/tmp/x"), dtype="bfloat16", plan=free)
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (2, 1)
    assert cfg.include_num_input_tokens_seen == "all" and cfg.use_liger_kernel and cfg.torch_compile
    assert cfg.pad_to_multiple_of is None
    assert cfg.liger_kernel_config["fused_linear_cross_entropy"] is False and cfg.liger_kernel_config["swiglu"]
    # no plan (an evaluation): `micro_batch_size` rows a pass, 1 when null
    cfg = sft_config(TrainParams(batch_size=4), Path("/tmp/x"), dtype="float32")
    assert (cfg.per_device_eval_batch_size, cfg.gradient_accumulation_steps) == (1, 4)
    assert cfg.include_num_input_tokens_seen == "non_padding"


def _parse(cmd):
    from accelerate.commands.launch import launch_command_parser

    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    return launch_command_parser().parse_args(cmd[3:])


def test_the_relaunch_command_is_accelerates_own():
    argv = ["stages/train.py", "--params", "p.yaml", "--out", "models/adapter"]
    a = _parse(launch.command(TrainParams(num_processes=2), argv, port=1234, threads=3))
    assert a.multi_gpu and not a.use_fsdp and a.num_processes == 2 and a.num_machines == 1 and a.machine_rank == 0
    assert (a.main_process_ip, a.main_process_port, a.num_cpu_threads_per_process) == ("127.0.0.1", 1234, 3)
    assert a.mixed_precision == "no"  # precision is the trainer's call
    assert [a.training_script, *a.training_script_args] == argv
    # one machine: a free port unless one is set
    free = _parse(launch.command(TrainParams(num_processes=2), argv)).main_process_port
    assert 0 < free < 65536
    several = TrainParams(num_processes=8, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1")
    a = _parse(launch.command(several, argv))
    assert (a.num_processes, a.num_machines, a.machine_rank, a.main_process_ip, a.main_process_port) == (
        8, 2, 1, "10.0.0.1", launch.DEFAULT_PORT)
    a = _parse(launch.command(TrainParams(num_processes=2, strategy="fsdp"), argv, port=1))
    assert a.use_fsdp and not a.multi_gpu and a.fsdp_sharding_strategy == "FULL_SHARD"
    # peft's FSDP + QLoRA settings
    assert (a.fsdp_cpu_ram_efficient_loading, a.fsdp_sync_module_states, a.fsdp_use_orig_params) == ("true", "true", "false")


def test_launch_is_needed_once_and_what_the_machine_cannot_run_names_the_key(monkeypatch):
    p = TrainParams(num_processes=2)
    for k in launch.LAUNCHED_ENV:
        monkeypatch.delenv(k, raising=False)
    assert launch.needs_launch(p) and not launch.needs_launch(TrainParams())
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not launch.needs_launch(p)  # the launched processes train instead of launching again

    launch.check(p, gpus=0, cores=2)
    launch.check(p, gpus=2, cores=1)
    with pytest.raises(ParamsError, match=r"`train.num_processes` \(3\).*no GPU and 2 CPU core"):
        launch.check(TrainParams(num_processes=3, batch_size=3), gpus=0, cores=2)
    with pytest.raises(ParamsError, match=r"`train.num_processes` \(4\).*2 processes a machine.*1 GPU"):
        launch.check(TrainParams(num_processes=4, num_machines=2, main_process_ip="h"), gpus=1)
    with pytest.raises(ParamsError, match="`train.strategy: fsdp` needs CUDA"):
        launch.check(TrainParams(num_processes=2, strategy="fsdp"), gpus=0, cores=2)
    monkeypatch.setattr(launch.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ParamsError, match=r"`train.num_processes` is 2: .*`accelerate` command"):
        launch.check(p, gpus=0, cores=2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the allocator preload is for CPU training")
def test_the_train_stage_runs_under_tcmalloc_on_a_cpu_once(tmp_path, monkeypatch):
    """`train.cpu_preload`: the stage replaces itself with the same command under tcmalloc (glibc kept what each
    differently shaped batch freed: 4.2 GB peak against 3.3, bench/train.py), exactly once, and not when off."""
    from llamaduo.hardware import tcmalloc

    lib = tcmalloc()
    if lib is None:
        pytest.skip("libtcmalloc-minimal4 is not installed (scripts/setup.sh installs it)")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert launch.allocator_env(TrainParams()) == {"LD_PRELOAD": lib}
    assert launch.allocator_env(TrainParams(cpu_preload=False)) == {}
    assert launch.allocator_env(TrainParams(), base={"LD_PRELOAD": f"/x/y.so:{lib}"}) == {}  # there already
    assert launch.allocator_env(TrainParams(), base={"LD_PRELOAD": "/x/y.so"}) == {"LD_PRELOAD": f"{lib}:/x/y.so"}
    script = tmp_path / "stage.py"
    script.write_text(
        "import os, sys\n"
        "from llamaduo.config import TrainParams\n"
        "from llamaduo.training import launch\n"
        "print('start', os.getpid(), flush=True)\n"
        "launch.preload_allocator(TrainParams(cpu_preload=sys.argv[1] == 'on'), sys.argv, script=__file__)\n"
        "launch.preload_allocator(TrainParams(), ['elsewhere.py'], script=__file__)  # imported, not run: no-op\n"
        "maps = open('/proc/self/maps').read()\n"
        "print('end', os.getpid(), 'tcmalloc' in maps, sys.argv[1:], flush=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, str(script), "on", "--x", "1"], capture_output=True, text=True, env=env,
                         check=True).stdout.split("\n")
    starts, end = [x for x in out if x.startswith("start")], next(x for x in out if x.startswith("end"))
    # two starts (the second under tcmalloc), one pid, the same arguments, the library mapped
    assert len(starts) == 2 and len({x.split()[1] for x in starts}) == 1 and end.split()[1] == starts[0].split()[1]
    assert end.split()[2] == "True" and end.endswith("['on', '--x', '1']")
    off = subprocess.run([sys.executable, str(script), "off"], capture_output=True, text=True, env=env, check=True).stdout
    assert off.count("start") == 1 and "end" in off and " False " in off


def test_the_4bit_base_follows_peft_for_fsdp_and_names_no_gpu_on_a_cpu():
    bf16 = torch.bfloat16
    fsdp = base_load_kwargs(quantize=True, dtype=bf16, fsdp=True, cuda=True, local_index=1)
    q = fsdp["quantization_config"]
    # peft's FSDP + QLoRA: storage in the compute dtype, FSDP places the shards (no device_map)
    assert q.bnb_4bit_quant_storage == bf16 and q.bnb_4bit_compute_dtype == bf16 and "device_map" not in fsdp
    ddp = base_load_kwargs(quantize=True, dtype=bf16, cuda=True, local_index=1)
    assert ddp["device_map"] == {"": 1} and ddp["quantization_config"].bnb_4bit_quant_storage == torch.uint8
    cpu = base_load_kwargs(quantize=True, dtype=torch.float32, cuda=False, local_index=1)
    assert "device_map" not in cpu and cpu["quantization_config"].bnb_4bit_compute_dtype == torch.float32
    assert base_load_kwargs(quantize=False, dtype=bf16, cuda=True) == {"dtype": bf16}


def test_vllm_executor_backend_reaches_the_engine_and_the_server(monkeypatch):
    p = Params.model_validate({"infer": {"tensor_parallel_size": 2, "distributed_executor_backend": "mp"}})
    assert vllm_kwargs("/m", p.infer, "float32")["distributed_executor_backend"] == "mp"
    assert vllm_kwargs("/m", Params().infer, "float32")["distributed_executor_backend"] is None  # vLLM's choice
    monkeypatch.setattr("llamaduo.inference.engines.importlib.util.find_spec", lambda name: None)
    ray = Params.model_validate({"infer": {"distributed_executor_backend": "ray"}})
    with pytest.raises(ParamsError, match="`infer.distributed_executor_backend` is `ray`"):
        vllm_kwargs("/m", ray.infer, "float32")

    def server(**srv):
        params = Params.model_validate({"providers": {"service": {"kind": "local", "model": "models/base", "server": srv}}})
        return LocalVLLMProvider("service", params.providers["service"])

    cmd = server(distributed_executor_backend="ray").command(1)
    assert cmd[cmd.index("--distributed-executor-backend") + 1] == "ray"
    assert "--distributed-executor-backend" not in server().command(1)
    # a new executor is another server, never the same answers' meaning
    assert server(distributed_executor_backend="ray").server_key() != server().server_key()
    with pytest.raises(ValueError, match="distributed_executor_backend"):
        Params.model_validate({"infer": {"distributed_executor_backend": "spark"}})


ROWS = [{"id": f"r{i}", "task": "summarize", "instruction": f"Summarize: item {i} is red and round.",
         "response": f"Item {i}: red.", "category": "Summarize", "split": "train"} for i in range(9)]


@pytest.mark.slow
def test_two_cpu_processes_train_disjoint_shards_and_write_one_adapter(tmp_path, base_model_dir):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    tables.write(tmp_path / "train.parquet", "split", ROWS)
    tables.write(tmp_path / "curated.parquet", "synthetic", [])
    # 9 rows, 1 held out: 8 rows, 2 a step -> 4 steps; each process 1 row a step
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "compute": {"dtype": "float32"},
        "train": {"quantize": False, "num_processes": 2, "batch_size": 2, "epochs": 1, "max_steps": None,
                  "max_length": 48, "val_ratio": 0.1, "lora_r": 4, "learning_rate": 1e-3,
                  "checkpoint_dir": str(tmp_path / "ckpt")}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1"}
    for k in launch.LAUNCHED_ENV:
        env.pop(k, None)
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "train.py"), "--train-rows", "train.parquet",
                           "--curated", "curated.parquet", "--base", str(base_model_dir), "--out", "adapter",
                           "--metrics-out", "train.json", "--loss-out", "loss.json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "train: 2 processes (ddp)" in proc.stderr  # the stage relaunched itself

    m = json.loads((tmp_path / "train.json").read_text())
    assert m["processes"] == 2 and m["steps"] == 4 and m["rows"] == 8
    # disjoint shards that together are every row: 4 each, none on both
    assert m["rows_by_process"] == [4, 4] and m["rows_on_several_processes"] == 0 and m["unique_rows_seen"] == 8
    losses = json.loads((tmp_path / "loss.json").read_text())
    assert len(losses) == 4 and all(math.isfinite(x["loss"]) for x in losses) and math.isfinite(m["val_loss"])

    # one adapter, written once (no leftovers of a second writer or of the atomic write)
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("adapter_model.safetensors")] == [Path("adapter/adapter_model.safetensors")]
    assert not list(tmp_path.glob("*.tmp*")) and not any((tmp_path / "ckpt").iterdir())
    assert json.loads((tmp_path / "adapter" / "submodels.json").read_text())["submodels"] == ["."]

    # peft loads it onto the base: the trained (non-zero) LoRA B weights are the ones in use
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model_dir), tmp_path / "adapter")
    state = model.state_dict()
    for key, t in saved.items():
        if "lora_B" in key:
            loaded = next(v for k, v in state.items() if k.startswith(key.removesuffix(".weight")) and k.endswith(".weight"))
            assert torch.equal(loaded, t)
    assert any(t.abs().sum() > 0 for k, t in saved.items() if "lora_B" in k)
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
