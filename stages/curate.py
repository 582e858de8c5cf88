"""curate: raw synthetic pairs -> curated pairs (rules, duplicates, decontamination), and what was dropped."""

from llamaduo import tables
from llamaduo.atomic import write_json
from llamaduo.curation import curate
from llamaduo.stage import run


def main(params, raw, train, test, out, dropped_out, metrics_out):
    kept, dropped, counts = curate(tables.read(raw, "synthetic"), train=tables.read(train, "split"),
                                   test=tables.read(test, "split"), p=params.curate)
    tables.write(out, "synthetic", kept)
    tables.write(dropped_out, "dropped", dropped)
    write_json(metrics_out, counts)


if __name__ == "__main__":
    run(main, "raw", "train", "test", "out", "dropped_out", "metrics_out")
