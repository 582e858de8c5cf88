"""synthesize: train seeds -> new pairs from the service LLM, until curation would reach `synth.volume`."""

from llamaduo import tables
from llamaduo.atomic import write_json
from llamaduo.stage import run
from llamaduo.synthesis import synthesize


def main(params, train, test, out, metrics_out):
    rows, stats = synthesize(train=tables.read(train, "split"), test=tables.read(test, "split"), params=params)
    tables.write(out, "synthetic", rows)
    write_json(metrics_out, stats)


if __name__ == "__main__":
    run(main, "train", "test", "out", "metrics_out")
