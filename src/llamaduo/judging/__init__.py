"""Judging: service LLMs grade every answer M times against the reference (a panel of judges, re-asks for
unusable replies, failures counted and never scored), compare the local answer with the service's in
both orders, and answer the test prompts themselves as the baseline.

- `names.py`: the names the tables are keyed on (the judge's metrics, the local model's answerer);
- `protocol.py`: what a judge is asked and how its replies are parsed;
- `grading.py`: the panel's judgments and pairwise verdicts (`evaluate`, the judge stage);
- `baseline.py`: the services' own answers, judged the same way (`baseline`, the baseline stage);
- `reference.py`: each answer against the reference with no judge: ROUGE-L, chrF, exact match;
- `scores.py`: per-answer scores, mean V, coverage C at zeta, intervals, P-Match, agreement;
- `report.py`: metrics/eval.json, metrics/baseline.json, the worst answers;
- `sequential.py`: the test prompts judged in rounds, stopping once the gate will not pass at its level.
"""
