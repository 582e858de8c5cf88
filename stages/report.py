"""report: the cycle's metrics -> metrics/summary.json and plot tables."""

from llamaduo import tables
from llamaduo.atomic import write_json
from llamaduo.report import score_points, summary
from llamaduo.stage import run


def main(params, prepare, curate, train, infer, eval, judgments, out, scores_out):
    s = summary(prepare=prepare, curate=curate, train=train, infer=infer, eval=eval, p=params.gate)
    write_json(out, s)
    write_json(scores_out, score_points(tables.read(judgments, "judgments")))
    gate = s["gate"]
    print(f"{gate['metric']} {gate['score']} vs threshold {gate['threshold']}: {'PASS' if gate['passed'] else 'below threshold'}")


if __name__ == "__main__":
    run(main, "prepare", "curate", "train", "infer", "eval", "judgments", "out", "scores_out")
