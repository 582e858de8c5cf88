"""MLflow tracking: one parent run per loop, one child run per cycle, the cycle's model as a registry version."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import yaml

from llamaduo.urls import userinfo_to_env

CYCLE_TAG = "llamaduo.cycle"
LOOP_TAG = "llamaduo.loop"
KEY_TAG = "llamaduo.loop_key"  # the loop's own id, recorded before its parent run exists (see start_parent)
DONE_TAG = "llamaduo.logged"  # set last: a child run without it was cut short and is logged again
VERSION_TAG = "llamaduo.version"
# what MLflow accepts in a metric or param name (mlflow.utils.validation); anything else becomes "_"
_UNSAFE = re.compile(r"[^\w\-. /:]")


def connect(p) -> None:
    """Point MLflow at the configured backend (the environment's MLFLOW_TRACKING_URI wins) and experiment."""
    import mlflow

    # a server's user:password goes to MLflow's own credential variables: MLflow prints its URL ("View run at")
    # and quotes it in errors
    uri = userinfo_to_env(os.environ.get("MLFLOW_TRACKING_URI") or p.tracking_uri, "MLFLOW_TRACKING_USERNAME",
                          "MLFLOW_TRACKING_PASSWORD", source="MLFLOW_TRACKING_URI")
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


def safe_name(name: str) -> str:
    """A metric or param name MLflow accepts. Names come from metrics files whose keys can be free text (a failure
    reason, a category): one apostrophe would make `log_metrics` raise half-way through a cycle's logging. A name
    that had to change gets a short hash of the original, so two different names never collide."""
    clean = _UNSAFE.sub("_", name).replace("..", "._").lstrip("/")[:200]
    if clean == name:
        return name
    return f"{clean}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"


def numeric(d: dict) -> dict[str, float]:
    return {safe_name(k): float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def start_parent(p, *, resume_id: str | None, tags: dict, key: str | None = None) -> str:
    """The loop's parent run: `resume_id` when the loop state names it, else the run tagged with the loop's `key`
    (the loop state records the key before the run exists, so a kill between creating the run and recording its
    id leaves no orphan: the restart adopts that run), else a new one."""
    import mlflow

    from llamaduo import faults

    connect(p)
    if resume_id:
        return resume_id
    found = mlflow.search_runs(filter_string=f"tags.`{KEY_TAG}` = '{key}'", output_format="list") if key else []
    if found:
        return found[0].info.run_id
    run = mlflow.start_run(run_name="llamaduo-loop", tags={LOOP_TAG: "parent", **({KEY_TAG: key} if key else {}), **tags})
    mlflow.end_run()
    faults.point("loop:parent_started")
    return run.info.run_id


def find_cycle_run(parent_id: str, cycle: int) -> str | None:
    """The complete child run of `cycle` under this loop's parent, or None. A child cut short (the process died
    while logging) is deleted, so the cycle is logged again in full and exactly one child per cycle remains."""
    import mlflow

    runs = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and tags.`{CYCLE_TAG}` = '{cycle}'",
                              output_format="list")
    done = [r for r in runs if r.data.tags.get(DONE_TAG) == "true"]
    for r in runs:
        if r not in done:
            mlflow.delete_run(r.info.run_id)
    return done[0].info.run_id if done else None


def log_cycle(*, parent_id: str, cycle: int, params_file: str, metrics_dir: str, tags: dict, at_ms: int | None = None) -> str:
    """A child run holding the cycle's flattened params, every metric (step = cycle), and the metrics files; then the
    parent's points of this cycle; the child's DONE_TAG last (see find_cycle_run), so a kill anywhere before it has
    the whole cycle logged again.

    The parent's points carry the time `at_ms` (default now; the loop passes its cycle commit's): logged again after a
    kill they are the same (key, step, timestamp, value), which MLflow's store keeps once (its metric key), so no point
    is lost or doubled."""
    import mlflow
    from mlflow.entities import Metric

    import llamaduo
    from llamaduo import faults

    params = yaml.safe_load(Path(params_file).read_text())
    metrics = {}
    for f in sorted(Path(metrics_dir).glob("*.json")):
        metrics |= flatten(json.loads(f.read_text()), f"{f.stem}.")
    tags = {CYCLE_TAG: str(cycle), VERSION_TAG: getattr(llamaduo, "__version__", "unknown"), **tags}
    with mlflow.start_run(run_id=parent_id):
        with mlflow.start_run(run_name=f"cycle-{cycle}", nested=True, tags=tags) as child:
            flat = {safe_name(k): str(v)[:500] for k, v in flatten(params).items()}
            mlflow.log_params(flat)
            mlflow.log_metrics(numeric(metrics), step=cycle)
            mlflow.log_artifacts(metrics_dir, artifact_path="metrics")
    client = mlflow.MlflowClient()
    # the parent carries the history, one point per cycle
    history = {k: v for k, v in numeric(metrics).items() if k.startswith(("eval.", "summary.gate"))}
    at_ms = int(time.time() * 1000) if at_ms is None else at_ms
    client.log_batch(parent_id, metrics=[Metric(k, v, at_ms, cycle) for k, v in history.items()])
    faults.point("tracking:parent_metrics_logged")
    client.set_tag(child.info.run_id, DONE_TAG, "true")
    return child.info.run_id
