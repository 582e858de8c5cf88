"""Fine-tuning: trl's SFT trainer with a peft LoRA adapter, on a 4-bit NF4 base when quantizing (QLoRA)."""

from __future__ import annotations

import math
import os
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path


def to_examples(rows: list[dict]) -> list[dict]:
    """Conversational prompt/completion rows: trl applies the chat template and puts the loss on the completion only."""
    return [
        {"prompt": [{"role": "user", "content": r["instruction"]}],
         "completion": [{"role": "assistant", "content": r["response"]}]}
        for r in rows
    ]


def count_truncated(tokenizer, examples: list[dict], max_length: int) -> tuple[int, int]:
    """(examples longer than max_length, total tokens) after the chat template."""
    over = total = 0
    for ex in examples:
        n = len(tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=True))
        total += min(n, max_length)
        over += n > max_length
    return over, total


def _bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def load_base(base_dir: str, *, quantize: bool):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute = torch.bfloat16 if _bf16_supported() else torch.float32
    kwargs = {"dtype": compute}
    if quantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
        )
    return AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)


def train(*, rows: list[dict], base_dir: str, out_dir: str, p) -> dict:
    """Train one adapter on `rows` with TrainParams `p`; write it to `out_dir`; return metrics."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    if not rows:
        raise ValueError("no training rows (train split and curated synthetic data are both empty)")
    if p.threads:
        torch.set_num_threads(p.threads)
    torch.manual_seed(p.seed)
    rows = list(rows)
    random.Random(p.seed).shuffle(rows)
    examples = to_examples(rows)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    truncated, tokens = count_truncated(tokenizer, examples, p.max_length)

    model = load_base(base_dir, quantize=p.quantize)
    lora = LoraConfig(r=p.lora_r, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout,
                      target_modules=p.target_modules, task_type="CAUSAL_LM")
    work = Path(tempfile.mkdtemp(prefix="llamaduo-train-"))
    cfg = SFTConfig(
        output_dir=str(work), max_length=p.max_length, per_device_train_batch_size=p.batch_size,
        gradient_accumulation_steps=p.grad_accum, learning_rate=p.learning_rate, lr_scheduler_type=p.lr_scheduler,
        max_steps=p.max_steps, gradient_checkpointing=p.gradient_checkpointing, logging_steps=1, save_strategy="no", report_to="none", seed=p.seed,
        use_cpu=not torch.cuda.is_available(), bf16=_bf16_supported(), dataset_num_proc=None,
    )
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(examples),
                         processing_class=tokenizer, peft_config=lora)
    start = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if not losses or not all(math.isfinite(x) for x in losses):
        raise FloatingPointError(f"training loss is not finite: {losses}")
    tmp_out = Path(tempfile.mkdtemp(dir=Path(out_dir).parent, prefix=".adapter-"))
    trainer.model.save_pretrained(tmp_out)
    tokenizer.save_pretrained(tmp_out)
    if Path(out_dir).exists():
        shutil.rmtree(out_dir)
    os.replace(tmp_out, out_dir)
    shutil.rmtree(work, ignore_errors=True)
    steps = trainer.state.global_step
    seen = min(len(examples), steps * p.batch_size * p.grad_accum)
    return {
        "loss_curve": [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h],
        "rows": len(rows),
        "truncated_rows": truncated,
        "steps": steps,
        "train_loss": float(result.training_loss),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "wall_s": round(wall, 2),
        "examples_per_s": round(steps * p.batch_size * p.grad_accum / wall, 3),
        "tokens_in_data": tokens,
        "examples_seen": seen,
        "quantized": p.quantize,
        "lora_r": p.lora_r,
        "lora_alpha": p.lora_alpha,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
