"""services: the `providers` params that results depend on (runtime knobs such as concurrency left out) ->
data/services.json, the dep of synthesize, baseline and judge in place of the whole `providers` section."""

from llamaduo.atomic import write_json
from llamaduo.services import services
from llamaduo.stage import run


def main(params, out):
    write_json(out, services(params))


if __name__ == "__main__":
    run(main, "out")
