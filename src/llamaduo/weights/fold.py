"""Folding a LoRA adapter into its base: the one place that turns base + adapter into plain weights.

Inference runs the folded model (a LoRA request in vLLM adds the adapter's matmuls to every layer at every token),
merging works on folded sub-models, and the registered pyfunc folds when it loads.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def fold(base_dir: str | Path, adapter_dir: str | Path, *, dtype=None):
    """The base model with the adapter merged in (a plain transformers model), in `dtype`: a torch dtype, float32
    when None. Merging passes the compute dtype (`llamaduo.hardware.torch_dtype(compute.dtype)`); this module
    does not decide it, so that `base_model` (which imports it) does not depend on the hardware probe."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype or torch.float32)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def save_folded(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, *, dtype=None) -> None:
    """Base + adapter folded and saved as safetensors in `out_dir`, with the adapter's tokenizer."""
    from transformers import AutoTokenizer

    fold(base_dir, adapter_dir, dtype=dtype).save_pretrained(str(out_dir))
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(out_dir))


@contextmanager
def folded(base_dir: str | Path, adapter_dir: str | Path, *, dtype=None):
    """A temporary folder holding base + adapter folded into plain weights; removed on exit."""
    tmp = Path(tempfile.mkdtemp(prefix="llamaduo-folded-"))
    try:
        save_folded(base_dir, adapter_dir, tmp, dtype=dtype)
        yield str(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
