"""Batch inference: K sampled answers per test prompt from the fine-tuned model, through its chat template.

vLLM's offline engine is the fast path; it gets the adapter merged into the base first (on CPU a LoRA
request ran ~4.5x slower than the merged model). transformers' batched `generate` is the fallback.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import time
from contextlib import contextmanager
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


def _vllm(model_dir: str, prompts: list[list[dict]], p) -> list[list[dict]]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, seed=p.seed, gpu_memory_utilization=p.gpu_memory_utilization,
              max_model_len=p.max_model_len, enforce_eager=True)
    sp = SamplingParams(n=p.k, temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_new_tokens)
    outs = llm.chat(prompts, sp, use_tqdm=True)
    return [[{"answer": o.text, "tokens": len(o.token_ids), "finish_reason": o.finish_reason} for o in out.outputs]
            for out in outs]


def _transformers(model_dir: str, prompts: list[list[dict]], p, batch_size: int = 8) -> list[list[dict]]:
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(p.seed)
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    results = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="generate", unit="batch"):
        texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts[i:i + batch_size]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, do_sample=p.temperature > 0, temperature=p.temperature or None,
                                 top_p=p.top_p, max_new_tokens=p.max_new_tokens, num_return_sequences=p.k,
                                 pad_token_id=tok.pad_token_id)
        new = gen[:, enc["input_ids"].shape[1]:]
        for j in range(len(texts)):
            answers = []
            for seq in new[j * p.k:(j + 1) * p.k]:
                ids = seq.tolist()
                ended = tok.eos_token_id in ids
                ids = ids[: ids.index(tok.eos_token_id)] if ended else [t for t in ids if t != tok.pad_token_id]
                answers.append({"answer": tok.decode(ids, skip_special_tokens=True), "tokens": len(ids),
                                "finish_reason": "stop" if ended else "length"})
            results.append(answers)
    return results


ENGINES = {"vllm": _vllm, "transformers": _transformers}


def pick_engine(name: str) -> str:
    has_vllm = importlib.util.find_spec("vllm") is not None
    if name == "auto":
        return "vllm" if has_vllm else "transformers"
    if name == "vllm" and not has_vllm:
        raise RuntimeError(vllm_missing_message("`infer.engine: vllm`"))
    return name


def generate(*, test: list[dict], base_dir: str, adapter_dir: str, p) -> tuple[list[dict], dict]:
    """K answers per test row; returns rows of the `responses` table and run metrics."""
    if p.threads:
        import torch

        torch.set_num_threads(p.threads)
    engine = pick_engine(p.engine)
    prompts = [[{"role": "user", "content": r["instruction"]}] for r in test]
    start = time.perf_counter()
    with merged_model(base_dir, adapter_dir) as model_dir:
        answers = ENGINES[engine](model_dir, prompts, p)
    wall = time.perf_counter() - start
    rows = [
        {"prompt_id": r["id"], "task": r["task"], "sample": k, "engine": engine, **a}
        for r, group in zip(test, answers) for k, a in enumerate(group)
    ]
    tokens = sum(r["tokens"] for r in rows)
    return rows, {
        "engine": engine, "prompts": len(test), "answers": len(rows), "tokens": tokens, "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 2) if wall else 0.0,
        "length_cutoffs": sum(r["finish_reason"] == "length" for r in rows),
    }
