"""trl's SFT trainer, with the loss taken where this device computes it fastest (`Plan.fused_lm_head`).

trl scores the vocabulary through a fused LM head: Triton kernels on a GPU that never build the [tokens, vocabulary]
logits, and only at the positions that carry a label. Without Triton (a CPU) it falls back to torch tiles that cast
to float32, matmul in float32 and recompute the projection in the backward pass: 32 s of a 100 s profile of 2 steps
on the 2-core AVX512-BF16 CPU, where a bf16 matmul runs several times faster. There the loss comes from the model's
own head instead, at the same positions (`logits_to_keep`: the prompt's positions are never projected onto the
vocabulary), under the trainer's autocast, and transformers' cross-entropy summed and divided by the tokens of the
whole step (`num_items_in_batch`), so the split into micro-batches still does not change it. What is lost is trl's
logged entropy and token accuracy, which nothing here reads.

Imported when training starts (trl with it), not with the params.
"""

from __future__ import annotations

import torch
from transformers import Trainer
from trl import SFTTrainer


class StepTrainer(SFTTrainer):
    """`SFTTrainer` whose loss uses trl's fused LM head only when `fused_lm_head`."""

    def __init__(self, *args, fused_lm_head: bool = True, **kwargs):
        self.fused_lm_head = fused_lm_head
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.fused_lm_head:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        # what each position predicts (the next token's label), and the positions where any row has one
        targets = torch.nn.functional.pad(inputs["labels"], (0, 1), value=-100)[..., 1:]
        scored = (targets != -100).any(dim=0).nonzero().flatten()
        # use_cache off as trl sets it: training keeps no KV cache
        inputs = {**inputs, "logits_to_keep": scored, "shift_labels": targets[:, scored], "use_cache": False}
        return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
