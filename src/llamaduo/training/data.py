"""Training data and shape: the held-out validation slice, conversational examples, truncation counts, and the
LoRA rank by volume."""

from __future__ import annotations

import random

from llamaduo import chat

# the paper's Table 5: LoRA rank by training volume (alpha = 2 x rank); the loop doubles volume 1k ... 256k,
# so rows fall clearly on one side of each bound (16k + coverage < 32k, 32k + coverage < 64k)
RANK_BY_ROWS = ((64_000, 32), (32_000, 16), (0, 8))



def lora_shape(p, n_rows: int) -> tuple[int, int]:
    """(rank, alpha): the params' values, or by volume where they are null."""
    r = p.lora_r or next(rank for bound, rank in RANK_BY_ROWS if n_rows >= bound)
    return r, p.lora_alpha or 2 * r


def holdout_size(n_rows: int, p) -> int:
    """How many of `n_rows` the validation slice holds: `val_ratio` of them, at least one when the ratio is > 0."""
    if not p.val_ratio or n_rows < 2:
        return 0
    return max(1, round(n_rows * p.val_ratio))


def holdout(rows: list[dict], p) -> tuple[list[dict], list[dict]]:
    """(fit, validation): a seeded `val_ratio` slice of `rows` (`holdout_size` of them)."""
    n_val = holdout_size(len(rows), p)
    if not n_val:
        return list(rows), []
    order = list(range(len(rows)))
    random.Random(p.seed).shuffle(order)
    val = set(order[:n_val])
    return [r for i, r in enumerate(rows) if i not in val], [r for i, r in enumerate(rows) if i in val]


def to_examples(rows: list[dict], tokenizer=None) -> list[dict]:
    """Conversational prompt/completion rows: trl applies the chat template and puts the loss on the completion
    only. The prompt carries the row's system prompt and earlier turns (llamaduo.chat); given the tokenizer, a
    system prompt is folded into the first user turn when its chat template has no system role."""
    return [
        {"prompt": chat.messages(r, response=False) if tokenizer is None else chat.for_tokenizer(r, tokenizer, response=False),
         "completion": [{"role": "assistant", "content": r["response"]}]}
        for r in rows
    ]


def token_lengths(tokenizer, examples: list[dict]) -> list[int]:
    """Each example's token count after the chat template, before any truncation."""
    # return_dict=False: transformers 5 returns a BatchEncoding (whose len() is its key count) by default
    return [len(tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=True, return_dict=False))
            for ex in examples]


def count_truncated(tokenizer, examples: list[dict], max_length: int, lengths: list[int] | None = None) -> tuple[int, int]:
    """(examples longer than max_length, total tokens) after the chat template; `lengths` (`token_lengths`) when
    already counted."""
    lengths = token_lengths(tokenizer, examples) if lengths is None else lengths
    return sum(n > max_length for n in lengths), sum(min(n, max_length) for n in lengths)
