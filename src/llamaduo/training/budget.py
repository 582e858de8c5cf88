"""The training budget: `train.epochs` passes over the rows, cut short by `train.max_steps` when it is set.

Pure arithmetic over the params and the row count, the same arithmetic the transformers Trainer does
(`Trainer.set_initial_training_values`): per process, an epoch is ceil(rows / (batch x processes)) micro-batches,
an optimizer step takes `grad_accum` of them (the last one of an epoch may take fewer), and an epoch-based run is
ceil(epochs x steps per epoch) steps. The sampler draws a fresh permutation each epoch, so a run that stops inside
its first epoch has read exactly the rows of the micro-batches it took, all distinct.

With `train.packing`, trl packs several rows into one `max_length` sequence before the sampler sees them: a
step then reads at least as many rows as computed here, so `rows_read` is a lower bound.

Several processes (`train.num_processes`, DDP or FSDP): `batch_size x grad_accum` is the GLOBAL batch of an
optimizer step, whatever the process count, so the params mean one recipe on any hardware. `per_process` splits
it: each process accumulates `grad_accum / n` micro-batches (then takes `batch_size / n` rows a micro-batch for
what `grad_accum` cannot absorb). Every step then reads `batch_size x grad_accum` rows as on one process (accelerate
hands process i micro-batches i, i + n, ... of one seeded order the processes share) and the steps per epoch are unchanged
(nested ceilings: ceil(ceil(m / a) / c) = ceil(m / ac) for m micro-batches of one process). The functions below
therefore take the params as they are (`num_processes=1`); `num_processes` is for the per-process arithmetic of a
split batch, as transformers does it. (Where an epoch's rows do not fill the last micro-batch of every process,
accelerate repeats its first rows to keep them in step: a few rows more, never a step more.)
"""

from __future__ import annotations

import math


def per_process(p, num_processes: int) -> tuple[int, int]:
    """(rows per micro-batch, micro-batches per step) of each of `num_processes` processes, so that together they
    take the global batch `batch_size x grad_accum`; ValueError naming the keys when it does not split evenly.
    The rule lives on the params section (`TrainParams.split_batch`), so `llamaduo check` applies it too."""
    return p.split_batch(num_processes)


def steps_per_epoch(p, n_rows: int, num_processes: int = 1) -> int:
    """Optimizer steps in one pass over `n_rows` examples."""
    batches = math.ceil(n_rows / (p.batch_size * num_processes))
    return max(math.ceil(batches / p.grad_accum), 1)


def total_steps(p, n_rows: int, num_processes: int = 1) -> int:
    """Optimizer steps the run takes: `epochs` passes, capped at `max_steps` when it is set."""
    by_epochs = math.ceil(p.epochs * steps_per_epoch(p, n_rows, num_processes))
    return by_epochs if p.max_steps is None else min(by_epochs, p.max_steps)


def rows_read(p, n_rows: int, num_processes: int = 1) -> int:
    """Distinct rows of `n_rows` that training reads under `p` (`train.epochs`, `train.max_steps`, batch shape).

    The volume the cap lets training read: raising the data past it trains on no more rows.
    """
    steps = total_steps(p, n_rows, num_processes)
    per_epoch = steps_per_epoch(p, n_rows, num_processes)
    if steps >= per_epoch:
        return n_rows
    # inside the first epoch every micro-batch is full and every row in it is new
    return min(n_rows, steps * p.grad_accum * p.batch_size * num_processes)


def cap_message(p, n_rows: int, num_processes: int = 1) -> str | None:
    """The warning for a `train.max_steps` that leaves rows unread; None when training reads every row."""
    read = rows_read(p, n_rows, num_processes)
    if read >= n_rows:
        return None
    return (f"train.max_steps = {p.max_steps} caps training at {read} of {n_rows} rows "
            f"({total_steps(p, n_rows, num_processes)} of {math.ceil(p.epochs * steps_per_epoch(p, n_rows, num_processes))} "
            f"steps of {p.epochs:g} epochs): {n_rows - read} rows are never read; raise `train.max_steps` or set it to null")
