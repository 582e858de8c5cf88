"""merge: the `train.submodels` adapters (same data, different orders) -> one full model in models/merged/
(off by default: then only models/merged/merge.json)."""

from llamaduo import tables
from llamaduo.atomic import write_json
from llamaduo.merging.run import merge
from llamaduo.stage import run


def main(params, train_rows, base, adapter, out, metrics_out):
    metrics = merge(params=params, train_rows=tables.read(train_rows, "split"), base=base, adapter=adapter, out=out)
    write_json(metrics_out, metrics)


if __name__ == "__main__":
    run(main, "train_rows", "base", "adapter", "out", "metrics_out")
