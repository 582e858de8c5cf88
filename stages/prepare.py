"""prepare: coverage JSONL -> train/test Parquet, split by phi per task."""

from llamaduo import coverage, tables
from llamaduo.atomic import write_json
from llamaduo.stage import run


def main(params, train_out, test_out, metrics_out):
    d = params.data
    train, test = coverage.prepare(coverage_dir=d.coverage_dir, tasks=d.tasks, train_ratio=d.train_ratio, seed=d.seed,
                                   max_rows_per_task=d.max_rows_per_task)
    tables.write(train_out, "split", train)
    tables.write(test_out, "split", test)
    write_json(metrics_out, {t: {"train": sum(r["task"] == t for r in train), "test": sum(r["task"] == t for r in test)}
                             for t in d.tasks})


if __name__ == "__main__":
    run(main, "train_out", "test_out", "metrics_out")
