"""Padding-free batches through PyTorch's SDPA without a [T, T] mask: each row of the micro-batch attends on its own.

transformers runs a padding-free batch (rows end to end, positions restarting at each row) through SDPA with a
block-diagonal [T, T] mask built from the positions: all T x T scores are computed and most are masked away, the
mask itself takes T^2 memory, and with a mask SDPA cannot use its FlashAttention kernel (on CUDA it also repeats the
grouped K/V heads to the query heads). Here each row's span of the batch goes through SDPA on its own, causal with
no mask: the FlashAttention kernel where the device has one, grouped heads kept, and sum(L_i^2) scores instead of
T^2. The rows' boundaries come from trl's padding-free collator (`cu_seq_lens_q`), read to the host once per
forward pass. flash-attn's varlen kernel does the same in one call where that package is installed
(training/plan.py prefers it).

A right-padded batch (each row's tokens first, its padding after: trl's collator) needs no mask either: causal
attention already keeps every real token from the padding that follows it, and the padding's own outputs carry no
loss (its labels are -100). So such a batch also goes through SDPA causal with no mask, where `sdpa` would build a
[rows, 1, T, T] mask and leave the FlashAttention kernel. A batch padded on the left, or a query that does not
start at the first key (generation with a cache), keeps SDPA's own mask.

Registered with transformers as `sdpa_varlen` (attention and mask). Several rows side by side, or any other mask,
go to transformers' own SDPA unchanged.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_varlen"

# the boundaries of the last batch: every layer of one forward pass gets the same tensor they come from
_last: tuple[torch.Tensor | None, list[int]] = (None, [])


def _bounds(cu_seq_lens: torch.Tensor | None, position_ids: torch.Tensor | None) -> list[int]:
    """Where the rows of a one-sequence batch start, and its end: from trl's `cu_seq_lens_q`, else from where the
    positions restart (a padding-free batch from elsewhere); [] when neither is given."""
    global _last
    source = cu_seq_lens if cu_seq_lens is not None else position_ids
    if source is None:
        return []
    if _last[0] is not source:
        if cu_seq_lens is not None:
            bounds = [int(x) for x in cu_seq_lens.tolist()]
        else:
            bounds = [int(x) for x in (position_ids[0] == 0).nonzero().flatten().tolist()] + [position_ids.shape[-1]]
        _last = (source, bounds)
    return _last[1]


def varlen_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                is_causal: bool | None = None, cu_seq_lens_q: torch.Tensor | None = None, **kwargs):
    """transformers' attention interface: query [1, heads, T, dim], key and value [1, kv heads, T, dim] of a
    padding-free batch whose rows start at `cu_seq_lens_q` (or where `position_ids` restart); returns
    ([1, T, heads, dim], None) as `sdpa` does."""
    one_sequence = attention_mask is None and query.shape[0] == 1 and query.shape[2] == key.shape[2]
    bounds = _bounds(cu_seq_lens_q, kwargs.get("position_ids")) if one_sequence else []
    if len(bounds) < 3:  # not a padding-free batch of several rows
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    out = [torch.nn.functional.scaled_dot_product_attention(
        query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout, scale=scaling, is_causal=True,
        enable_gqa=groups > 1) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return torch.cat(out, dim=2).transpose(1, 2).contiguous(), None


def right_padded(attention_mask: torch.Tensor) -> bool:
    """Whether every row of a 2D 0/1 mask is its tokens then its padding (never a token after a pad)."""
    return attention_mask.dim() == 2 and bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


def varlen_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0, *args,
                attention_mask: torch.Tensor | None = None, **kwargs):
    """transformers' mask interface: no mask for a batch without padding (its rows are kept apart by `varlen_sdpa`)
    or padded on the right with the queries covering every key (causal attention alone is exact for the real
    tokens), SDPA's own mask otherwise."""
    whole = q_offset == 0 and kv_offset == 0 and q_length == kv_length
    if attention_mask is None or (whole and attention_mask.shape[-1] == kv_length and right_padded(attention_mask)):
        return None
    return sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset, *args, attention_mask=attention_mask,
                     **kwargs)


AttentionInterface.register(NAME, varlen_sdpa)
AttentionMaskInterface.register(NAME, varlen_mask)
