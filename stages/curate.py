"""curate: raw synthetic pairs -> curated pairs (rules, duplicates, decontamination), and what was dropped."""

import pyarrow as pa

from llamaduo import tables
from llamaduo.atomic import write_json
from llamaduo.curation import curate_parquet
from llamaduo.stage import run


def main(params, raw, train, test, out, dropped_out, metrics_out):
    # the rows stream through Arrow a batch at a time; Arrow's default allocator (mimalloc) keeps the freed batches'
    # memory: ~100 MB more at the stage's peak on 256k rows than the system allocator (bench/curate.py)
    pa.set_memory_pool(pa.system_memory_pool())
    # dropped.parquet holds the columns its schema declares (pair + reason); curated.parquet every column
    counts = curate_parquet(raw, out=out, dropped_out=dropped_out, train=tables.read(train, "split"),
                            test=tables.read(test, "split"), p=params.curate, cluster=params.cluster)
    write_json(metrics_out, counts)


if __name__ == "__main__":
    run(main, "raw", "train", "test", "out", "dropped_out", "metrics_out")
