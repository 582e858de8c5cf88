"""The migration cycle around the pipeline: the loop that reruns `dvc repro` with a growing synthetic volume,
MLflow tracking, the model registry and its champion alias, the cost report, and serving the champion. The report
stage it reads (summary, promotion gate, the HTML page) is `llamaduo.reporting`.

- `remote.py`: `dvc push` of each cycle to the team's DVC remote;
- `driver.py`: `llamaduo loop` (cycles, commits, resumption; one loop per repo, each side effect recorded once);
- `tracking.py`, `model_registry.py`: MLflow runs, registered versions, the champion alias;
- `cost.py`: service vs local cost and the break-even month; `serving.py`: `llamaduo serve`.

Nothing is imported here: `llamaduo serve` and `llamaduo cost` need neither MLflow nor git.
"""
