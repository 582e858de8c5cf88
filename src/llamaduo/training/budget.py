"""The training budget: `train.epochs` passes over the rows, cut short by `train.max_steps` when it is set.

Pure arithmetic over the params and the row count. `train.batch_size` is the GLOBAL batch: the rows of one
optimizer step, whatever the device and the process count, so the params mean one recipe on any hardware. An
epoch is ceil(rows / batch_size) steps and an epoch-based run ceil(epochs x steps per epoch) steps. The sampler
draws a fresh permutation each epoch, so a run that stops inside its first epoch has read exactly the rows of
the steps it took, all distinct.

How a step is run is a runtime matter (`per_process`): each of n processes takes batch_size / n rows a step, in
micro-batches of `micro_batch_size` rows (chosen per device, training/plan.py), accumulating batch_size /
(n x micro_batch_size) of them. transformers counts an epoch per process as ceil(rows / (micro x n)) micro-batches
and a step as `grad_accum` of them (the last of an epoch may take fewer); nested ceilings make that ceil(rows /
batch_size) steps for any split (ceil(ceil(m / a) / c) = ceil(m / ac)), and accelerate hands process i micro-batches
i, i + n, ... of one seeded order the processes share, so every step reads the same rows whatever the split. The
loss of a step is token-weighted across its micro-batches (transformers' `num_items_in_batch`), so the split does
not change it either: only float sums and the dropout masks' draws differ. (Where an epoch's rows do not fill
the last micro-batch of every process, accelerate repeats its first rows to keep them in step: a few rows more,
never a step more.)

With `train.packing`, trl packs several rows into one `max_length` sequence before the sampler sees them: a
step then reads at least as many rows as computed here, so `rows_read` is a lower bound.
"""

from __future__ import annotations

import math


def per_process(p, num_processes: int, micro_batch_size: int) -> tuple[int, int]:
    """(rows per micro-batch, micro-batches per step) of each of `num_processes` processes, so that together they
    take the global batch `batch_size`; ValueError naming the keys when it does not split evenly. The rule lives
    on the params section (`TrainParams.split_batch`), so `llamaduo check` applies it too."""
    return p.split_batch(num_processes, micro_batch_size)


def steps_per_epoch(p, n_rows: int) -> int:
    """Optimizer steps in one pass over `n_rows` examples."""
    return max(math.ceil(n_rows / p.batch_size), 1)


def total_steps(p, n_rows: int) -> int:
    """Optimizer steps the run takes: `epochs` passes, capped at `max_steps` when it is set."""
    by_epochs = math.ceil(p.epochs * steps_per_epoch(p, n_rows))
    return by_epochs if p.max_steps is None else min(by_epochs, p.max_steps)


def rows_read(p, n_rows: int) -> int:
    """Distinct rows of `n_rows` that training reads under `p` (`train.epochs`, `train.max_steps`, `train.batch_size`).

    The volume the cap lets training read: raising the data past it trains on no more rows.
    """
    steps = total_steps(p, n_rows)
    if steps >= steps_per_epoch(p, n_rows):
        return n_rows
    # inside the first epoch every step is full and every row in it is new
    return min(n_rows, steps * p.batch_size)


def cap_message(p, n_rows: int) -> str | None:
    """The warning for a `train.max_steps` that leaves rows unread; None when training reads every row."""
    read = rows_read(p, n_rows)
    if read >= n_rows:
        return None
    return (f"train.max_steps = {p.max_steps} caps training at {read} of {n_rows} rows "
            f"({total_steps(p, n_rows)} of {math.ceil(p.epochs * steps_per_epoch(p, n_rows))} "
            f"steps of {p.epochs:g} epochs): {n_rows - read} rows are never read; raise `train.max_steps` or set it to null")
