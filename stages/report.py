"""report: the cycle's metrics -> metrics/summary.json (with the promotion gate's decision) and plot tables."""

from llamaduo import tables
from llamaduo.atomic import write_json
from llamaduo.cycle.report import score_points, summary
from llamaduo.stage import run


def main(params, prepare, curate, train, infer, eval, champion, judgments, out, scores_out):
    s = summary(prepare=prepare, curate=curate, train=train, infer=infer, eval=eval, champion=champion, p=params.gate)
    write_json(out, s)
    write_json(scores_out, score_points(tables.read(judgments, "judgments")))
    gate = s["gate"]
    print(f"gate: {'PASS' if gate['passed'] else 'not passed'}: {gate['reason']}")


if __name__ == "__main__":
    run(main, "prepare", "curate", "train", "infer", "eval", "champion", "judgments", "out", "scores_out")
