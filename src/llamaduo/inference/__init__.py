"""Batch inference: K sampled answers per test prompt from the fine-tuned model, through its chat template.

vLLM's offline engine is the fast path; it gets the adapter folded into the base first (a LoRA request adds
the adapter's matmuls to every layer at every token; the folded model runs the base's alone). transformers'
batched `generate` is the fallback.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

from llamaduo import chat
from llamaduo.hardware import compute_dtype
from llamaduo.inference.engines import ENGINES, pick_engine
from llamaduo.weights import folded


def _model_dir(base_dir: str, adapter_dir: str, merged_dir: str | None):
    """The merge stage's model when it made one (sub-models merged), else base + adapter merged here."""
    if merged_dir and (Path(merged_dir) / "config.json").is_file():
        return nullcontext(merged_dir)
    return folded(base_dir, adapter_dir)


def _prompts(test: list[dict], model_dir: str) -> list[list[dict]]:
    """Each test row's conversation up to its instruction (system prompt and earlier turns included, as in
    training), shaped for the model's chat template (a system prompt folded in where it has no system role)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [chat.for_tokenizer(r, tok, response=False) for r in test]


def generate(*, test: list[dict], base_dir: str, adapter_dir: str, p, merged_dir: str | None = None,
             compute: dict | None = None) -> tuple[list[dict], dict]:
    """K answers per test row; returns rows of the `responses` table and run metrics. `compute` is
    `hardware.compute_dtype(params.compute.dtype)` (default: the hardware's choice); the metrics record it."""
    compute = compute or compute_dtype()
    if p.threads:
        import torch

        torch.set_num_threads(p.threads)
    engine = pick_engine(p.engine)
    start = time.perf_counter()
    with _model_dir(base_dir, adapter_dir, merged_dir) as model_dir:
        prompts = _prompts(test, model_dir)
        answers, timing = ENGINES[engine](model_dir, prompts, p, dtype=compute["dtype"])
    wall = time.perf_counter() - start
    rows = [
        {"prompt_id": r["id"], "task": r["task"], "sample": k, "engine": engine, **a}
        for r, group in zip(test, answers) for k, a in enumerate(group)
    ]
    dtype = {"dtype": compute["dtype"], "dtype_source": compute["source"], "cpu_flags": compute["cpu_flags"]}
    return rows, run_stats(rows, engine=engine, prompts=len(test), wall_s=wall, **timing) | dtype


def run_stats(rows: list[dict], *, engine: str, prompts: int, wall_s: float, load_s: float, generate_s: float,
              engine_tokens: dict | None = None) -> dict:
    """Per-run figures: tokens/s over the generation alone (the engine's throughput; loading and merging are
    reported apart, they do not grow with the test set), and latency percentiles over the answers.
    `engine_tokens` (vLLM: `engines.token_counters`) adds what the engine computed: prefill not served by its
    prefix cache plus generation, and that per second of generation time."""
    from statistics import median

    tokens = sum(r["tokens"] for r in rows)
    lat = sorted(r["latency_s"] for r in rows if r.get("latency_s") is not None)
    return {
        "engine": engine, "prompts": prompts, "answers": len(rows), "tokens": tokens,
        "wall_s": round(wall_s, 2), "load_s": round(load_s, 2), "generate_s": round(generate_s, 2),
        "tokens_per_s": round(tokens / generate_s, 2) if generate_s else 0.0,
        "wall_tokens_per_s": round(tokens / wall_s, 2) if wall_s else 0.0,
        "latency_median_s": round(median(lat), 3) if lat else None,
        "latency_max_s": round(lat[-1], 3) if lat else None,
        "latency_measured": len(lat),
        "length_cutoffs": sum(r["finish_reason"] == "length" for r in rows),
    } | ({"engine_tokens": engine_tokens,
          "computed_tokens_per_s": round(engine_tokens["computed"] / generate_s, 2) if generate_s else 0.0}
         if engine_tokens else {})


__all__ = ["ENGINES", "generate", "pick_engine", "run_stats"]
