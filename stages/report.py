"""report: the cycle's metrics -> metrics/summary.json (with the promotion gate's decision), metrics/headline.json
(the figures `dvc metrics show` prints), the plot tables, and metrics/report.html (the page people open)."""

import json
from pathlib import Path

from llamaduo import tables
from llamaduo.atomic import write_json
from llamaduo.reporting import html_report, page_data
from llamaduo.reporting.summary import headline, prompt_scores, prompt_scores_record, score_points, summary, usage
from llamaduo.stage import run


def _load(path: str) -> dict:
    return json.loads(Path(path).read_text())


def main(params, prepare, curate, train, infer, eval, champion, judgments, synthesize, baseline, out, scores_out,
         headline_out, html_out, baseline_judgments=None, reference=None, prompt_scores_out=None):
    g = params.gate
    rows = tables.read(judgments, "judgments")
    scores = prompt_scores(g.metric, judgments=rows,
                           baseline_judgments=tables.read(baseline_judgments, "judgments") if baseline_judgments else [],
                           reference=tables.read(reference, "reference") if reference else [])
    s = summary(prepare=prepare, curate=curate, train=train, infer=infer, eval=eval, champion=champion, p=g, scores=scores)
    write_json(out, s)
    if prompt_scores_out:
        write_json(prompt_scores_out, prompt_scores_record(g.metric, scores[0]))
    ev = _load(eval)
    spend = usage([_load(synthesize), _load(baseline), ev])
    write_json(headline_out, headline(s, eval=ev, train=_load(train), spend=spend))
    write_json(scores_out, score_points(rows))
    # the page reads the folders the files above live in (metrics/, data/), as `llamaduo loop` does after a cycle
    html_report.write(html_out, page_data.load(metrics_dir=Path(out).parent, data_dir=Path(judgments).parent.parent))
    gate = s["gate"]
    print(f"gate: {'PASS' if gate['passed'] else 'not passed'}: {gate['reason']}")
    if gate["power_warning"]:
        print(f"gate: underpowered: {gate['power_warning']}")


if __name__ == "__main__":
    run(main, "prepare", "curate", "train", "infer", "eval", "champion", "judgments", "synthesize", "baseline", "out",
        "scores_out", "headline_out", "html_out", optional=("baseline_judgments", "reference", "prompt_scores_out"))
