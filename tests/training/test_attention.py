"""Padding-free attention without a mask (llamaduo.training.attention): on a small random Llama with grouped KV heads,
a padding-free batch of three rows gives each row the logits and gradients it gets alone, as transformers' SDPA
with its block-diagonal mask does."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from llamaduo.training import attention

ROWS = [list(range(3, 8)), list(range(20, 29)), list(range(40, 43))]  # 5, 9 and 3 tokens


def model(kernel: str):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=kernel, dtype=torch.float32)


def test_each_row_of_a_padding_free_batch_sees_only_itself():
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([{"input_ids": r} for r in ROWS])
    assert batch["input_ids"].shape == (1, 17) and "attention_mask" not in batch
    varlen, masked = model(attention.NAME), model("sdpa")
    # no KV cache, as in training (with one, transformers does not look for packed rows)
    out = varlen(**batch, use_cache=False)
    # transformers' own SDPA path: a [17, 17] block-diagonal mask from the restarting positions
    reference = masked(**batch, use_cache=False)
    assert torch.allclose(out.logits, reference.logits, atol=1e-5)
    assert out.loss.item() == pytest.approx(reference.loss.item(), rel=1e-5)
    start = 0
    for row in ROWS:
        alone = varlen(input_ids=torch.tensor([row]), use_cache=False).logits[0]
        assert torch.allclose(out.logits[0, start:start + len(row)], alone, atol=1e-5)
        start += len(row)
    out.loss.backward()
    reference.loss.backward()
    for (name, a), (_, b) in zip(varlen.named_parameters(), masked.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name
    # across rows nothing leaks: plain causal attention over the 17 tokens gives other logits
    joined = varlen(input_ids=batch["input_ids"], use_cache=False).logits
    assert not torch.allclose(joined[0, 5:14], out.logits[0, 5:14], atol=1e-3)


def test_no_mask_is_built_for_a_padding_free_or_right_padded_batch_and_others_keep_sdpas():
    assert attention.varlen_mask(batch_size=1, q_length=17, kv_length=17, attention_mask=None) is None
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert attention.varlen_mask(batch_size=2, q_length=4, kv_length=4, attention_mask=right) is None
    assert attention.varlen_mask(batch_size=2, q_length=4, kv_length=4, attention_mask=right.bool()) is None
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    mask = attention.varlen_mask(batch_size=2, q_length=4, kv_length=4, attention_mask=left)
    assert mask.shape == (2, 1, 4, 4) and not mask[0, 0, 3, 0]
    holed = torch.tensor([[1, 0, 1, 1]])
    assert attention.varlen_mask(batch_size=1, q_length=4, kv_length=4, attention_mask=holed) is not None
    # queries after cached keys (generation): the padding is not behind every query, SDPA's mask stays
    cached = attention.varlen_mask(batch_size=2, q_length=1, kv_length=4, q_offset=3, attention_mask=right)
    assert cached is not None and not cached[0, 0, 0, 3]


def test_a_right_padded_batch_trains_as_with_sdpas_mask():
    """trl's collator pads each row on the right to a multiple of 8; with no mask the real tokens' logits, the loss
    and every gradient are what transformers' SDPA gives with its padding mask."""
    batch = DataCollatorForLanguageModeling(pad_token_id=0, pad_to_multiple_of=8)([{"input_ids": r} for r in ROWS])
    assert batch["input_ids"].shape == (3, 16) and int(batch["attention_mask"].sum()) == 17
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    unmasked, masked = model(attention.NAME), model("sdpa")
    out, reference = unmasked(**batch, use_cache=False), masked(**batch, use_cache=False)
    real = batch["attention_mask"].bool()
    assert torch.allclose(out.logits[real], reference.logits[real], atol=1e-5)
    assert out.loss.item() == pytest.approx(reference.loss.item(), rel=1e-5)
    out.loss.backward()
    reference.loss.backward()
    for (name, a), (_, b) in zip(unmasked.named_parameters(), masked.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name
    # the padding's own outputs differ (it sees the row, not only itself): the comparison above is not vacuous
    assert not torch.allclose(out.logits[~real], reference.logits[~real], atol=1e-3)
