"""MLflow tracking: one parent run per loop, one child run per cycle, the cycle's model as a registry version."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

CYCLE_TAG = "llamaduo.cycle"
LOOP_TAG = "llamaduo.loop"


def connect(p) -> None:
    """Point MLflow at the configured backend (the environment's MLFLOW_TRACKING_URI wins) and experiment."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or p.tracking_uri
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        # embedded backend: artifacts beside the database, not in ./mlruns of whatever folder we run from
        if mlflow.get_experiment_by_name(p.experiment) is None:
            mlflow.create_experiment(p.experiment, artifact_location=(db.parent.resolve() / "mlartifacts").as_uri())
    mlflow.set_experiment(p.experiment)


def flatten(obj, prefix: str = "") -> dict:
    """Nested dicts/lists -> {"a.b.0": value}, the shape MLflow params and metrics take."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out |= flatten(v, f"{prefix}{k}.")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out |= flatten(v, f"{prefix}{i}.")
    else:
        out[prefix[:-1]] = obj
    return out


def numeric(d: dict) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def start_parent(p, *, resume_id: str | None, tags: dict) -> str:
    import mlflow

    connect(p)
    if resume_id:
        return resume_id
    run = mlflow.start_run(run_name="llamaduo-loop", tags={LOOP_TAG: "parent", **tags})
    mlflow.end_run()
    return run.info.run_id


def logged_cycles(parent_id: str) -> set[int]:
    import mlflow

    runs = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", output_format="list")
    return {int(r.data.tags[CYCLE_TAG]) for r in runs if CYCLE_TAG in r.data.tags}


def log_cycle(*, parent_id: str, cycle: int, params_file: str, metrics_dir: str, tags: dict) -> str:
    """A child run holding the cycle's flattened params, every metric (step = cycle), and the metrics files."""
    import mlflow

    params = yaml.safe_load(Path(params_file).read_text())
    metrics = {}
    for f in sorted(Path(metrics_dir).glob("*.json")):
        metrics |= flatten(json.loads(f.read_text()), f"{f.stem}.")
    with mlflow.start_run(run_id=parent_id):
        with mlflow.start_run(run_name=f"cycle-{cycle}", nested=True, tags={CYCLE_TAG: str(cycle), **tags}) as child:
            flat = {k: str(v)[:500] for k, v in flatten(params).items()}
            mlflow.log_params(flat)
            mlflow.log_metrics(numeric(metrics), step=cycle)
            mlflow.log_artifacts(metrics_dir, artifact_path="metrics")
        # the parent carries the history, one point per cycle
        mlflow.log_metrics({k: v for k, v in numeric(metrics).items() if k.startswith(("eval.", "summary.gate"))}, step=cycle)
    return child.info.run_id
