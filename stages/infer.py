"""infer: test prompts -> K sampled answers each from the fine-tuned model."""

from llamaduo import tables
from llamaduo.atomic import write_json
from llamaduo.hardware import compute_dtype
from llamaduo.inference import generate
from llamaduo.stage import run


def main(params, test, base, adapter, merged, out, metrics_out):
    rows, stats = generate(test=tables.read(test, "split"), base_dir=base, adapter_dir=adapter, merged_dir=merged,
                           p=params.infer, compute=compute_dtype(params.compute.dtype))
    tables.write(out, "responses", rows)
    write_json(metrics_out, stats)


if __name__ == "__main__":  # vLLM's engine starts worker processes that re-import this file
    run(main, "test", "base", "adapter", "merged", "out", "metrics_out")
