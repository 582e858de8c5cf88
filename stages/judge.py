"""judge: each answer graded M times by the service LLM against the reference -> judgments and scores."""

from llamaduo import tables
from llamaduo.atomic import write_json
from llamaduo.judging import evaluate
from llamaduo.stage import run


def main(params, responses, test, out, metrics_out):
    judgments, summary = evaluate(responses=tables.read(responses, "responses"), test=tables.read(test, "split"),
                                  params=params)
    tables.write(out, "judgments", judgments)
    write_json(metrics_out, summary)


if __name__ == "__main__":
    run(main, "responses", "test", "out", "metrics_out")
