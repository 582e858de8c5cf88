"""base_model: `model.base` (GGUF, folder or Hub id) -> models/base in Hugging Face format."""

from llamaduo.stage import run
from llamaduo.weights import materialize


def main(params, out):
    print(materialize(base=params.model.base, gguf_package=params.model.gguf_package, out=out))


if __name__ == "__main__":
    run(main, "out")
