"""Fine-tuning: trl's SFT trainer with a peft LoRA adapter, on a 4-bit NF4 base when quantizing (QLoRA).

`train` fits `train.submodels` adapters that differ only in data order (the input of merging, see
`llamaduo.merging`). Each one checkpoints into `train.checkpoint_dir/train-<hash of inputs and params>/`,
so a killed run resumes at its last checkpoint (and skips finished sub-models) instead of restarting.

The output folder is a plain peft adapter (sub-model 0, what inference loads) plus `submodels.json`
listing every sub-model's folder relative to it: "." for sub-model 0, `submodels/<i>` for the others.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path

from llamaduo.config import runtime_keys
from llamaduo.errors import DataError
from llamaduo.training.data import count_truncated, lora_shape, to_examples

SUBMODELS_FILE = "submodels.json"


def use_bf16(p) -> bool:
    import torch

    if p.bf16 is not None:
        return p.bf16
    # CPUs mostly emulate bf16 matmuls (slower than fp32); only a CUDA GPU that has it gains
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def load_base(base_dir: str, *, quantize: bool, bf16: bool = False):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute = torch.bfloat16 if bf16 else torch.float32
    kwargs = {"dtype": compute}
    if quantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
        )
        if torch.cuda.is_available():
            from accelerate import PartialState

            # a 4-bit model cannot be moved after loading: under `accelerate launch` each process loads onto its own GPU
            kwargs["device_map"] = {"": PartialState().local_process_index}
    return AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)


def checkpoint_key(rows: list[dict], val_rows: list[dict], base_dir: str, p) -> str:
    """Hash of what the run computes from: rows, held-out rows, base weights and the params that matter."""
    from llamaduo.weights import fingerprint

    h = hashlib.sha256()
    h.update(json.dumps([rows, val_rows], sort_keys=True, default=str).encode())
    h.update(fingerprint(base_dir).encode())
    # runtime knobs (threads, checkpoint folder) change how a run goes, not what it computes
    h.update(json.dumps(p.model_dump(exclude=runtime_keys(type(p))), sort_keys=True).encode())
    return h.hexdigest()[:16]


def sft_config(p, output_dir: Path, **overrides):
    import torch
    from trl import SFTConfig

    kwargs = dict(
        output_dir=str(output_dir), max_length=p.max_length, per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=p.batch_size, gradient_accumulation_steps=p.grad_accum,
        learning_rate=p.learning_rate, lr_scheduler_type=p.lr_scheduler, max_steps=p.max_steps,
        gradient_checkpointing=p.gradient_checkpointing, packing=p.packing, logging_steps=1, report_to="none",
        seed=p.seed, use_cpu=not torch.cuda.is_available(), bf16=use_bf16(p), dataset_num_proc=None,
        include_num_input_tokens_seen="non_padding", eval_strategy="no", save_strategy="no",
        # LoRA leaves most parameters frozen: DDP's unused-parameter search would only cost time
        ddp_find_unused_parameters=False,
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def _train_one(*, examples, val_examples, base_dir, tokenizer, p, r, alpha, data_seed, ckpt: Path, final: Path,
               callbacks=()) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerState
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer

    # same seed for every sub-model: identical LoRA init and dropout, so they differ only in data order
    torch.manual_seed(p.seed)
    examples = list(examples)
    # the trainer's sampler also shuffles by data_seed; the pre-shuffle keeps orders distinct whatever the sampler does
    random.Random(data_seed).shuffle(examples)
    model = load_base(base_dir, quantize=p.quantize, bf16=use_bf16(p))
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=p.lora_dropout, target_modules=p.target_modules, task_type="CAUSAL_LM")
    cfg = sft_config(p, ckpt, data_seed=data_seed, save_strategy="steps", save_steps=p.save_steps, save_total_limit=1)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(examples),
                         eval_dataset=Dataset.from_list(val_examples) if val_examples else None,
                         processing_class=tokenizer, peft_config=lora, callbacks=list(callbacks))
    last = get_last_checkpoint(str(ckpt)) if ckpt.is_dir() else None
    start_step = start_tokens = 0
    if last:
        state = TrainerState.load_from_json(str(Path(last) / "trainer_state.json"))
        start_step, start_tokens = state.global_step, state.num_input_tokens_seen
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    wall = time.perf_counter() - start
    log = trainer.state.log_history
    losses = [h["loss"] for h in log if "loss" in h]
    if not losses or not all(math.isfinite(x) for x in losses):
        raise FloatingPointError(f"training loss is not finite: {losses}")
    # no eval_loss when trl dropped every validation example (its completion truncated away at max_length)
    val_loss = trainer.evaluate().get("eval_loss") if val_examples else None
    tokens = trainer.state.num_input_tokens_seen
    steps = trainer.state.global_step
    metrics = {
        "data_seed": data_seed,
        "steps": steps,
        "resumed_from_step": start_step,
        "train_loss": float(result.training_loss),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "val_loss": val_loss,
        "tokens_seen": int(tokens),
        "examples_seen": steps * p.batch_size * p.grad_accum * trainer.accelerator.num_processes,
        "wall_s": round(wall, 2),
        # this process's share only, so a resumed run reports its real speed
        "tokens_per_s": round((tokens - start_tokens) / wall, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "loss_curve": [{"step": h["step"], "loss": h["loss"]} for h in log if "loss" in h],
    }
    if trainer.accelerator.is_main_process:
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics))
        tmp.replace(final)  # a finished sub-model is skipped on resume only once it is complete
    trainer.accelerator.wait_for_everyone()
    return metrics


def train(*, rows: list[dict], base_dir: str, out_dir: str, p, val_rows: list[dict] | None = None, callbacks=()) -> dict:
    """Train `p.submodels` adapters on `rows` (validation loss on `val_rows`); write them to `out_dir`; return metrics.

    `callbacks`: extra transformers TrainerCallbacks (progress, early stop ...), given to every sub-model's trainer.
    """
    import torch
    from accelerate import PartialState
    from transformers import AutoTokenizer

    if not rows:
        raise DataError("no training rows (train split and curated synthetic data are both empty)")
    if p.threads:
        torch.set_num_threads(p.threads)
    val_rows = list(val_rows or [])
    examples, val_examples = to_examples(rows), to_examples(val_rows)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    truncated, tokens = count_truncated(tokenizer, examples, p.max_length)
    r, alpha = lora_shape(p, len(rows))
    root = Path(p.checkpoint_dir) / f"train-{checkpoint_key(rows, val_rows, base_dir, p)}"
    state = PartialState()

    subs = []
    for i in range(p.submodels):
        final = root / f"sub-{i}" / "final"
        if (final / "metrics.json").is_file():
            subs.append(json.loads((final / "metrics.json").read_text()))
            continue
        subs.append(_train_one(examples=examples, val_examples=val_examples, base_dir=base_dir, tokenizer=tokenizer,
                               p=p, r=r, alpha=alpha, data_seed=p.seed + i, ckpt=root / f"sub-{i}", final=final,
                               callbacks=callbacks))

    if state.is_main_process:
        out = Path(out_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".adapter-"))
        paths = []
        for i in range(p.submodels):
            dest = tmp if i == 0 else tmp / "submodels" / str(i)
            shutil.copytree(root / f"sub-{i}" / "final", dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("metrics.json"))
            paths.append("." if i == 0 else f"submodels/{i}")
        (tmp / SUBMODELS_FILE).write_text(json.dumps({"submodels": paths, "data_seeds": [s["data_seed"] for s in subs]}, indent=1))
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
        shutil.rmtree(root, ignore_errors=True)  # the adapters are out: the checkpoints have served
    state.wait_for_everyone()

    head = subs[0]
    metrics = {
        "loss_curve": head["loss_curve"],  # sub-model 0's; the others' final losses are under `submodels`
        "rows": len(rows),
        "val_rows": len(val_rows),
        "truncated_rows": truncated,
        "tokens_in_data": tokens,
        **{k: v for k, v in head.items() if k not in ("loss_curve", "data_seed")},
        "quantized": p.quantize,
        "packing": p.packing,
        "bf16": use_bf16(p),
        "lora_r": r,
        "lora_alpha": alpha,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if p.submodels > 1:
        metrics["submodels"] = [{k: v for k, v in s.items() if k != "loss_curve"} for s in subs]
        metrics["total_wall_s"] = round(sum(s["wall_s"] for s in subs), 2)
    return metrics
