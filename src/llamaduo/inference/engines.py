"""The inference engines: vLLM's offline engine (the fast path) and transformers' batched `generate` (the fallback),
each answering chat prompts K times from a full model folder."""

from __future__ import annotations

import importlib.util
import os
import time
from contextlib import contextmanager

from llamaduo import vllm_cpu
from llamaduo.errors import ParamsError, require_vllm


def _vllm_latency(out) -> float | None:
    """Seconds from the request entering the engine's queue to its last token, from vLLM's per-request stats
    (engine-core monotonic timestamps; None when the engine kept no stats for it)."""
    m = getattr(out, "metrics", None)
    queued, last = getattr(m, "queued_ts", 0.0), getattr(m, "last_token_ts", 0.0)
    return round(last - queued, 4) if queued and last and last >= queued else None


# vLLM's token counters (its Prometheus names, without the `_total` suffix): the prefill tokens it processed,
# those of them its prefix cache supplied, and the tokens it generated. The offline engine (`LLM.get_metrics`)
# and the server (`/metrics`) report the same ones, so a stage and the engine's peak are counted alike.
TOKEN_COUNTERS = {"prompt": "vllm:prompt_tokens", "prompt_cached": "vllm:prompt_tokens_cached",
                  "generation": "vllm:generation_tokens"}


def token_counters(samples) -> dict[str, int]:
    """{prompt, prompt_cached, generation, computed} from (name, value) pairs of vLLM's metrics, summed over
    engines; `computed` = tokens the engine ran through the model (prefill not from the cache, plus generation)."""
    names = {v: k for k, v in TOKEN_COUNTERS.items()}
    out = dict.fromkeys(TOKEN_COUNTERS, 0)
    for name, value in samples:
        key = names.get(name.removesuffix("_total"))
        if key:
            out[key] += int(value)
    return out | {"computed": out["prompt"] - out["prompt_cached"] + out["generation"]}


def engine_token_counters(llm) -> dict[str, int]:
    """`token_counters` of an offline engine (`vllm.LLM`, started with stats on)."""
    return token_counters((m.name, m.value) for m in llm.get_metrics() if hasattr(m, "value"))


def server_token_counters(base_url: str, timeout: float = 10) -> dict[str, int]:
    """`token_counters` of a running vLLM server, from its Prometheus `/metrics` (`base_url` without `/v1`)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{base_url.rstrip('/')}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    return token_counters((s.name, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples
                          if s.name.endswith("_total"))


def vllm_kwargs(model_dir: str, p, dtype: str, requests: int = 1) -> dict:
    """The offline engine's arguments: `dtype` from `hardware.compute_dtype` (bf16 is emulated in fp32 arithmetic,
    with conversions on top, on CPUs without AVX512-BF16/AMX), parallelism from `infer.tensor_parallel_size` / `infer.data_parallel_size`,
    and `infer.distributed_executor_backend` (`ray` spreads the workers over a Ray cluster's machines). On CPU
    the KV cache holds the `requests` prompts the stage sends at once (`vllm_cpu.memory_args`)."""
    if p.distributed_executor_backend == "ray" and importlib.util.find_spec("ray") is None:
        raise ParamsError("`infer.distributed_executor_backend` is `ray`, but Ray is not installed (pip install 'ray[default]' "
                          "here and on every node)")
    # the seed goes to the engine: vllm-cpu crashes on a per-request SamplingParams(seed=...);
    # disable_log_stats=False keeps per-request timestamps, the source of each answer's latency
    return {"model": model_dir, "dtype": dtype, "seed": p.seed, "gpu_memory_utilization": p.gpu_memory_utilization,
            "max_model_len": p.max_model_len, "enforce_eager": True, "disable_log_stats": False,
            "tensor_parallel_size": p.tensor_parallel_size, "data_parallel_size": p.data_parallel_size,
            # None is vLLM's own default (it picks by the parallel sizes)
            "distributed_executor_backend": p.distributed_executor_backend,
            **vllm_cpu.memory_args(p, model_dir, dtype, requests)}


@contextmanager
def _environ(extra: dict[str, str]):
    """os.environ with `extra` set while the engine starts (its processes inherit it), restored after."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _vllm(model_dir: str, prompts: list[list[dict]], p, dtype: str = "float32") -> tuple[list[list[dict]], dict]:
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    cpu_env = vllm_cpu.env(p)
    with _environ(cpu_env):
        llm = LLM(**vllm_kwargs(model_dir, p, dtype, requests=len(prompts)))
    t1 = time.perf_counter()
    sp = SamplingParams(n=p.k, temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_new_tokens)
    outs = llm.chat(prompts, sp, use_tqdm=True)
    t2 = time.perf_counter()
    answers = [[{"answer": o.text, "tokens": len(o.token_ids), "finish_reason": o.finish_reason,
                 "latency_s": _vllm_latency(out)} for o in out.outputs] for out in outs]
    return answers, {"load_s": t1 - t0, "generate_s": t2 - t1, "engine_tokens": engine_token_counters(llm)}


def _transformers(model_dir: str, prompts: list[list[dict]], p, dtype: str = "float32",
                  batch_size: int = 8) -> tuple[list[list[dict]], dict]:
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    torch.manual_seed(p.seed)
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
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
    """`infer.engine` resolved: `auto` is vLLM when installed, else transformers; `vllm` needs vLLM installed."""
    if name == "auto":
        return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
    if name == "vllm":
        require_vllm("`infer.engine: vllm`")
    return name
