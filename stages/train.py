"""train: coverage train + curated synthetic pairs -> a LoRA/QLoRA adapter on the base model."""

from llamaduo import tables
from llamaduo.atomic import write_json
from llamaduo.stage import run
from llamaduo.training import train


def main(params, train_rows, curated, base, out, metrics_out, loss_out):
    rows = tables.read(train_rows, "split") + tables.read(curated, "synthetic")
    stats = train(rows=rows, base_dir=base, out_dir=out, p=params.train)
    write_json(loss_out, stats.pop("loss_curve"))
    write_json(metrics_out, stats)


if __name__ == "__main__":
    run(main, "train_rows", "curated", "base", "out", "metrics_out", "loss_out")
