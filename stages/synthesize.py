"""synthesize: train seeds -> new pairs from the service LLM, until curation would reach `synth.volume`."""

from llamaduo import tables
from llamaduo.atomic import write_json
from llamaduo.budget import loop_budget
from llamaduo.providers import open_providers
from llamaduo.providers.cache import CallCache
from llamaduo.stage import run
from llamaduo.synthesis import synthesize


def main(params, train, test, out, metrics_out):
    s = params.synth
    # a volume of 0 (cycle 0) asks for nothing: no provider is built
    with (CallCache(params.cache.path, budget=loop_budget(params)) as cache,
          open_providers(params.providers, [s.provider] if s.volume else []) as providers):
        rows, stats = synthesize(train=tables.read(train, "split"), test=tables.read(test, "split"), provider=providers.get(s.provider),
                                 cache=cache, synth=s, curate_params=params.curate)
    tables.write(out, "synthetic", rows)
    write_json(metrics_out, stats)


if __name__ == "__main__":
    run(main, "train", "test", "out", "metrics_out")
