"""synthesize: train seeds -> new pairs from the service LLM (none when `synth.volume` is 0)."""

from llamaduo import tables
from llamaduo.atomic import write_json
from llamaduo.stage import run
from llamaduo.synthesis import synthesize


def main(params, train, out, metrics_out):
    rows, stats = synthesize(train=tables.read(train, "split"), params=params)
    tables.write(out, "synthetic", rows)
    write_json(metrics_out, stats)


if __name__ == "__main__":
    run(main, "train", "out", "metrics_out")
