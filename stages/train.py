"""train: coverage train + curated synthetic pairs -> a LoRA/QLoRA adapter (or `train.submodels` of them) on the base model.

Several processes, GPUs or machines: `train.num_processes` > 1 makes the stage relaunch itself under
`accelerate launch` (llamaduo.training.launch), so dvc.yaml's command stays the same; every process trains, only
the main one writes (docs/training-and-hardware.md).
"""

import sys

from llamaduo import tables
from llamaduo.atomic import write_json
from llamaduo.errors import ParamsError
from llamaduo.stage import run
from llamaduo.training import cap_message, holdout, launch, train


def main(params, train_rows, curated, base, out, metrics_out, loss_out):
    # on a CPU, tcmalloc from the process's start (train.cpu_preload): the stage runs again under it, once
    launch.preload_allocator(params.train, sys.argv, script=__file__)
    if launch.needs_launch(params.train):
        # the launched processes run this same command line; their failure is this stage's failure
        sys.exit(launch.relaunch(params.train, [sys.argv[0], *sys.argv[1:]]))
    state = launch.process_state()
    if state.num_processes != params.train.num_processes:
        # launched by hand with another count: the params must say the layout (the batch split is checked for it)
        raise ParamsError(f"launched in {state.num_processes} processes but `train.num_processes` is "
                          f"{params.train.num_processes}: set it (the stage launches itself when it is > 1)")
    # the validation slice comes from coverage train only: real rows, the same ones every cycle
    fit, val = holdout(tables.read(train_rows, "split"), params.train)
    rows = fit + tables.read(curated, "synthetic")
    # the params' batch is the global one whatever the process count (training/budget.py)
    warning = cap_message(params.train, len(rows))
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
