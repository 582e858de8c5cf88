"""The sub-models `train` wrote, and their validation loss, measured the way training measures it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from llamaduo.errors import DataError
from llamaduo.hardware import compute_dtype
from llamaduo.training import SUBMODELS_FILE, sft_config, to_examples


def read_submodels(adapter_dir: str | Path) -> list[Path]:
    """The sub-model adapter folders `train` wrote (just `adapter_dir` for a run without a manifest)."""
    adapter_dir = Path(adapter_dir)
    manifest = adapter_dir / SUBMODELS_FILE
    if not manifest.is_file():
        return [adapter_dir]
    return [adapter_dir / rel for rel in json.loads(manifest.read_text())["submodels"]]


def validation_loss(model_dir: str | Path, val_rows: list[dict], p, *, dtype: str = "auto") -> float:
    """Mean loss on the assistant turns of `val_rows` for a full model folder, computed as training computes it
    (in the compute dtype: `dtype` is `compute.dtype`, resolved by `llamaduo.hardware.compute_dtype`)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    if not val_rows:
        raise DataError("no validation rows: `train.val_ratio` is 0")
    if p.threads:
        torch.set_num_threads(p.threads)
    ds = Dataset.from_list(to_examples(val_rows, AutoTokenizer.from_pretrained(str(model_dir))))
    dt = compute_dtype(dtype)["dtype"]
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dt))
    with tempfile.TemporaryDirectory(prefix="llamaduo-eval-") as work:
        # SFTTrainer insists on a train set; evaluate() only reads the eval set
        trainer = SFTTrainer(model=model, args=sft_config(p, Path(work), dtype=dt), train_dataset=ds, eval_dataset=ds,
                             processing_class=AutoTokenizer.from_pretrained(str(model_dir)))
        loss = trainer.evaluate().get("eval_loss")
    if loss is None:
        raise DataError(f"no validation example has a response left within `train.max_length` ({p.max_length}): "
                        "raise it or `train.val_ratio`")
    return float(loss)
