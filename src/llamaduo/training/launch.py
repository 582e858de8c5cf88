"""Training past one process: the train stage relaunches itself under `accelerate launch` (the way trl and peft
document multi-GPU training) when `train.num_processes` > 1, so dvc.yaml's command stays the same and the change
is a params change.

accelerate's `--multi_gpu` launcher (torchrun) starts the processes on CUDA and on a CPU alike: with no GPU,
`process_state` asks for the CPU and accelerate joins them over gloo. `--cpu` would pick accelerate's simple
launcher instead, which starts one process and expects mpirun to start the rest.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys

from llamaduo.errors import ParamsError

# torchrun sets these in every process it starts; their presence means "already launched"
LAUNCHED_ENV = ("LOCAL_RANK", "WORLD_SIZE")
# accelerate's default rendezvous port: several machines must agree on it, so no free-port pick there
DEFAULT_PORT = 29500


def process_state():
    """accelerate's PartialState, on the CPU where there is no GPU: without `cpu=True` accelerate does not join
    launched CPU processes (each would train alone on the whole data). One per process (a shared state): the
    first call decides, so the stage and the trainer both call this one."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def launched() -> bool:
    """Whether this process was started by a launcher (torchrun / accelerate launch)."""
    return all(k in os.environ for k in LAUNCHED_ENV)


def needs_launch(p) -> bool:
    """Whether the stage must relaunch itself: more than one process asked for, and not yet launched."""
    return p.num_processes > 1 and not launched()


def allocator_env(p, base: dict | None = None) -> dict[str, str]:
    """The LD_PRELOAD that puts tcmalloc under this stage (`train.cpu_preload`, on a CPU), or {} when none is
    needed (off, a GPU, the library missing, or already preloaded). A preload acts only from a process's start,
    hence `preload_allocator` runs the stage again with it."""
    import torch

    from llamaduo.hardware import preload_env, tcmalloc

    if not p.cpu_preload or torch.cuda.is_available():
        return {}
    return preload_env((tcmalloc(),), base)


def preload_allocator(p, argv: list[str], script: str) -> None:
    """Replace this process with the same stage under tcmalloc when `allocator_env` asks for it (same pid, so
    DVC and a launcher see one process); return when nothing is needed, or when `script` (the stage's file) is
    not what this process runs (`argv[0]`): a caller that imported the stage (a test, a notebook) is not re-run."""
    if os.path.realpath(argv[0]) != os.path.realpath(script):
        return
    extra = allocator_env(p)
    if extra:
        os.execve(sys.executable, [sys.executable, *argv], {**os.environ, **extra})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(p, *, gpus: int | None = None, cores: int | None = None) -> None:
    """ParamsError naming the key when this machine cannot run `p`'s processes: accelerate missing, more
    processes per machine than GPUs (or CPU cores where there is no GPU), FSDP without a GPU."""
    import torch

    if importlib.util.find_spec("accelerate") is None:
        raise ParamsError(f"`train.num_processes` is {p.num_processes}: training across processes needs the `accelerate` "
                          "command (pip install accelerate)")
    gpus = torch.cuda.device_count() if gpus is None else gpus
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    local = p.num_processes // p.num_machines
    if gpus and local > gpus:
        raise ParamsError(f"`train.num_processes` ({p.num_processes}) over `train.num_machines` ({p.num_machines}) is {local} "
                          f"processes a machine, but this machine has {gpus} GPU(s): one process per GPU")
    if not gpus and local > cores:
        # more CPU processes than cores only time-slice the same cores, each with its own copy of the model
        raise ParamsError(f"`train.num_processes` ({p.num_processes}) over `train.num_machines` ({p.num_machines}) is {local} "
                          f"processes a machine, but this machine has no GPU and {cores} CPU core(s)")
    if not gpus and p.strategy == "fsdp":
        raise ParamsError("`train.strategy: fsdp` needs CUDA GPUs (bitsandbytes' 4-bit FSDP sharding); use `ddp` on a CPU")


def command(p, argv: list[str], *, port: int | None = None, threads: int | None = None) -> list[str]:
    """`python -m accelerate.commands.launch ...` running `argv` (the stage script and its arguments) in
    `p.num_processes` processes. `threads`: CPU threads per process (accelerate sets OMP_NUM_THREADS from it)."""
    if port is None:
        # one machine: a free port, so two runs on one host do not meet at the same rendezvous
        port = p.main_process_port or (_free_port() if p.num_machines == 1 else DEFAULT_PORT)
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--num_processes", str(p.num_processes), "--num_machines", str(p.num_machines),
           "--machine_rank", str(p.machine_rank), "--main_process_ip", p.main_process_ip or "127.0.0.1",
           "--main_process_port", str(port),
           # precision is the trainer's (bf16 from compute.dtype, trainer.sft_config): accelerate must not force one
           "--mixed_precision", "no", "--dynamo_backend", "no"]
    if threads:
        cmd += ["--num_cpu_threads_per_process", str(threads)]
    if p.strategy == "fsdp":
        # peft's FSDP + QLoRA recipe (examples/sft/configs/fsdp_config_qlora.yaml): wrap per decoder layer, load
        # weights on rank 0 only and broadcast them, flat params not kept original (4-bit storage is uniform)
        cmd += ["--use_fsdp", "--fsdp_version", "1", "--fsdp_sharding_strategy", "FULL_SHARD",
                "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_backward_prefetch", "BACKWARD_PRE",
                "--fsdp_state_dict_type", "SHARDED_STATE_DICT", "--fsdp_cpu_ram_efficient_loading", "true",
                "--fsdp_sync_module_states", "true", "--fsdp_use_orig_params", "false", "--fsdp_offload_params", "false"]
    else:
        cmd += ["--multi_gpu"]  # torchrun: on CUDA and on CPU (gloo) alike, see the module docstring
    return cmd + list(argv)


def relaunch(p, argv: list[str]) -> int:
    """Run the stage again under `accelerate launch` and wait; its exit status. Every process reloads params and
    trains; only the main one writes (trainer.train, stages/train.py)."""
    import subprocess

    import torch

    check(p)
    threads = p.threads
    if threads is None and not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        # accelerate's multi-process launcher gives each process 1 thread unless told: on a CPU, share the cores
        threads = max(1, len(os.sched_getaffinity(0)) // (p.num_processes // p.num_machines))
    cmd = command(p, argv, threads=threads)
    print(f"train: {p.num_processes} processes ({p.strategy}) on {p.num_machines} machine(s): {' '.join(cmd)}",
          file=sys.stderr, flush=True)
    return subprocess.run(cmd).returncode
