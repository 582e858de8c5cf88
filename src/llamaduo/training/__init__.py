"""Fine-tuning the local model: trl's SFT trainer with a peft LoRA adapter (QLoRA on a 4-bit NF4 base), sub-models
that differ only in data order, checkpoints a killed run resumes from; the data slices and LoRA shape it uses."""

from llamaduo.training.data import count_truncated, holdout, lora_shape, to_examples
from llamaduo.training.trainer import SUBMODELS_FILE, load_base, sft_config, train, use_bf16

__all__ = ["SUBMODELS_FILE", "count_truncated", "holdout", "load_base", "lora_shape", "sft_config", "to_examples", "train",
           "use_bf16"]
