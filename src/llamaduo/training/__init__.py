"""Fine-tuning the local model: trl's SFT trainer with a peft LoRA adapter (QLoRA on a 4-bit NF4 base), sub-models
that differ only in data order, checkpoints a killed run resumes from; the data slices, LoRA shape and step budget
it uses; how this device runs the global batch (`plan`); the relaunch under `accelerate launch` for several
processes (`launch`)."""

from llamaduo.training import launch, plan
from llamaduo.training.budget import cap_message, per_process, rows_read, steps_per_epoch, total_steps
from llamaduo.training.data import count_truncated, holdout, lora_shape, to_examples, token_lengths
from llamaduo.training.trainer import SUBMODELS_FILE, base_load_kwargs, load_base, resolve_quantize, sft_config, train

__all__ = ["SUBMODELS_FILE", "base_load_kwargs", "cap_message", "count_truncated", "holdout", "launch", "load_base",
           "lora_shape", "per_process", "plan", "resolve_quantize", "rows_read", "sft_config", "steps_per_epoch",
           "to_examples", "token_lengths", "total_steps", "train"]
