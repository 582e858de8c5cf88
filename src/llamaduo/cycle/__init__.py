"""The migration cycle around the pipeline: the report stage's summary and promotion gate, the loop that reruns
`dvc repro` with a growing synthetic volume, MLflow tracking, the model registry and its champion alias,
the cost report, and serving the champion.

- `report.py`: metrics/summary.json, metrics/headline.json (the DVC metric) and the gate's decision (the report stage);
- `html_report.py`: metrics/report.html, the figures and tables to look at (the report stage and the loop);
- `remote.py`: `dvc push` of each cycle to the team's DVC remote;
- `gate.py`: the decision itself, threshold and no-regression against the champion;
- `driver.py`: `llamaduo loop` (cycles, commits, resumption; one loop per repo, each side effect recorded once);
- `tracking.py`, `model_registry.py`: MLflow runs, registered versions, the champion alias;
- `cost.py`: service vs local cost and the break-even month; `serving.py`: `llamaduo serve`.

Nothing is imported here: the report stage needs neither MLflow nor git.
"""
