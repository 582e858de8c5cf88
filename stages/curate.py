"""curate: raw synthetic pairs -> curated pairs (rules, duplicates, decontamination), and what was dropped."""

from llamaduo import tables
from llamaduo.atomic import write_json
from llamaduo.curation import curate
from llamaduo.stage import run


def main(params, raw, train, test, out, dropped_out, metrics_out):
    kept, dropped, counts = curate(tables.read(raw, "synthetic"), train=tables.read(train, "split"),
                                   test=tables.read(test, "split"), p=params.curate, cluster=params.cluster)
    tables.write(out, "synthetic", kept)
    # curate passes every column through; dropped.parquet holds the ones its schema declares (pair + reason)
    columns = tables.columns("dropped")
    tables.write(dropped_out, "dropped", [{k: d.get(k) for k in columns} for d in dropped])
    write_json(metrics_out, counts)


if __name__ == "__main__":
    run(main, "raw", "train", "test", "out", "dropped_out", "metrics_out")
