"""train: coverage train + curated synthetic pairs -> a LoRA/QLoRA adapter (or `train.submodels` of them) on the base model.

Multi-GPU: `accelerate launch --config_file configs/accelerate/multi_gpu.yaml stages/train.py ...` (see README);
every process trains, only the main one writes.
"""

import sys

from llamaduo import tables
from llamaduo.atomic import write_json
from llamaduo.stage import run
from llamaduo.training import cap_message, holdout, train


def main(params, train_rows, curated, base, out, metrics_out, loss_out):
    from accelerate import PartialState

    state = PartialState()
    # the validation slice comes from coverage train only: real rows, the same ones every cycle
    fit, val = holdout(tables.read(train_rows, "split"), params.train)
    rows = fit + tables.read(curated, "synthetic")
    warning = cap_message(params.train, len(rows), state.num_processes)
    if warning and state.is_main_process:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    stats = train(rows=rows, val_rows=val, base_dir=base, out_dir=out, p=params.train, dtype=params.compute.dtype)
    if stats.get("rows_dropped_too_long") and state.is_main_process:
        print(f"warning: {stats['rows_dropped_too_long']} of {stats['rows_available']} rows have a prompt that fills "
              f"`train.max_length` ({params.train.max_length}) and were not trained on", file=sys.stderr, flush=True)
    if state.is_main_process:
        write_json(loss_out, stats.pop("loss_curve"))
        write_json(metrics_out, stats)


if __name__ == "__main__":
    run(main, "train_rows", "curated", "base", "out", "metrics_out", "loss_out")
