"""Judging: service LLMs grade every answer M times against the reference (a panel of judges, re-asks for
unusable replies, failures counted and never scored), compare the local answer with the service's in
both orders, and answer the test prompts themselves as the baseline.

- `protocol.py`: what a judge is asked and how its replies are parsed;
- `grading.py`: the panel's judgments and pairwise verdicts (`evaluate`, the judge stage);
- `baseline.py`: the services' own answers, judged the same way (`baseline`, the baseline stage);
- `reference.py`: each answer against the reference with no judge: ROUGE-L, chrF, exact match;
- `scores.py`: per-answer scores, mean V, coverage C at zeta, intervals, P-Match, agreement;
- `report.py`: metrics/eval.json, metrics/baseline.json, the worst answers.
"""

from llamaduo.judging.baseline import baseline
from llamaduo.judging.grading import evaluate
from llamaduo.judging.protocol import LOCAL, METRICS
from llamaduo.judging.reference import REFERENCE_METRICS, reference_scores
from llamaduo.judging.report import baseline_report, eval_report, worst_answers
from llamaduo.judging.scores import answer_scores, select

__all__ = ["LOCAL", "METRICS", "REFERENCE_METRICS", "answer_scores", "baseline", "baseline_report", "eval_report", "evaluate",
           "reference_scores", "select", "worst_answers"]
