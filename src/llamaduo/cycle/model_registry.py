"""The model registry: each cycle's adapter as a version, its base named by content; the alias marks the champion.

The base model is logged to the tracking server's artifact store once per content fingerprint (an MLflow logged model
tagged with it), and a version names it by that fingerprint: `models:/...@champion` loads wherever the tracking
server is reachable, not only where the project's models/base sits.

Promotions and rollbacks keep their history (version, reason, time) as a tag of the registered model, so
the alias can be moved back and every move is explained.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import mlflow

from llamaduo.errors import ModelError, UserError

HISTORY_TAG = "llamaduo.champion_history"
BASE_TAG = "base_fingerprint"  # on a version and on the logged base model: the base's content fingerprint
BASE_MODEL_NAME = "llamaduo-base"


class LocalModel(mlflow.pyfunc.PythonModel):
    """The local model as an MLflow pyfunc (base + LoRA adapter, or the merge stage's full model):
    `predict` takes a DataFrame with a `prompt` column."""

    def load_context(self, context):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llamaduo.weights import fold

        if "merged" in context.artifacts:
            folder = context.artifacts["merged"]
            self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        else:
            folder = context.artifacts["adapter"]
            self.model = fold(fetch_base(context.model_config[BASE_TAG]), folder).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")

    def predict(self, context, model_input, params=None):
        import torch

        params = params or {}
        prompts = list(model_input["prompt"])
        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                    add_generation_prompt=True) for p in prompts]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = self.model.generate(**enc, do_sample=False, max_new_tokens=int(params.get("max_new_tokens", 128)),
                                      pad_token_id=self.tokenizer.pad_token_id)
        return [self.tokenizer.decode(o[enc["input_ids"].shape[1]:], skip_special_tokens=True) for o in out]


def _signature():
    """A `prompt` column in, one string per row out, and `max_new_tokens` as a predict param: MLflow passes a
    param to `predict` only when the signature declares it."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", "prompt")]), outputs=Schema([ColSpec("string")]),
                          params=ParamSchema([ParamSpec("max_new_tokens", "long", 128)]))


def model_name(prefix: str, tasks: list[str]) -> str:
    return prefix + "+".join(tasks)


def log_and_register(*, name: str, adapter_dir: str, base_dir: str, base_md5: str, tags: dict,
                     merged_dir: str | None = None) -> str:
    """Inside the active run: log the pyfunc model and register it as a version carrying `tags` and the base's
    fingerprint; return its number. With `merged_dir` (sub-models merged) the full merged model is logged instead of
    the adapter; otherwise the base goes to the artifact store first (`store_base`), once per fingerprint.

    Idempotent per run: when this run already has a registered version (a restart after a kill between registering
    and recording it), that version is returned and nothing is registered twice; a model the run logged completely
    but did not register (a kill between the two) is registered, not logged again."""
    from llamaduo import __version__, faults
    from llamaduo.weights import fingerprint

    run = mlflow.active_run()
    existing = version_of_run(name, run.info.run_id)
    if existing is not None:
        return existing
    base = fingerprint(base_dir) if merged_dir else store_base(base_dir, experiment_id=run.info.experiment_id)
    uri = _logged_model(run)
    if uri is None:
        artifacts = {"merged": merged_dir} if merged_dir else {"adapter": adapter_dir}
        uri = mlflow.pyfunc.log_model(
            name="model", python_model=LocalModel(), artifacts=artifacts,
            model_config={BASE_TAG: base, "base_md5": base_md5},
            # listed, not inferred: inference imports the model and probes the environment (slow, and not needed).
            # The pyfunc class is llamaduo's, so llamaduo (this version) is a requirement like the others
            pip_requirements=[f"llamaduo=={__version__}", "torch", "transformers", "peft", "mlflow"],
            signature=_signature(),
        ).model_uri
    faults.point("registry:model_logged")
    # the tags are created with the version (one call), so no version exists without its cycle and run;
    # an absent figure is an absent tag, never the string "None"
    tags = {**tags, BASE_TAG: base}
    mv = mlflow.register_model(uri, name, tags={k: str(v) for k, v in tags.items() if v is not None})
    return str(mv.version)


def _logged_model(run) -> str | None:
    """The URI of the model `run` logged completely (READY), or None; one it left unfinished (a kill while logging)
    is deleted, so the run holds one model."""
    from mlflow.entities import LoggedModelStatus

    client = mlflow.MlflowClient()
    found = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                        filter_string=f"source_run_id = '{run.info.run_id}'")
    ready = [m for m in found if m.status == LoggedModelStatus.READY]
    for m in found:
        if m not in ready:
            client.delete_logged_model(m.model_id)
    return f"models:/{ready[0].model_id}" if ready else None


def _bases(fp: str) -> list:
    """The complete logged base models with fingerprint `fp`, in every experiment of the tracking server (another
    loop, under another experiment, may have logged the same base). One not set ready was cut short while uploading,
    or is being uploaded by another loop right now: never used, never deleted here."""
    from mlflow.entities import LoggedModelStatus

    client = mlflow.MlflowClient()
    experiments, token = [], None
    while True:
        page = client.search_experiments(page_token=token)
        experiments += [e.experiment_id for e in page]
        token = page.token
        if not token:
            break
    found = client.search_logged_models(experiment_ids=experiments, filter_string=f"tags.`{BASE_TAG}` = '{fp}'")
    return [m for m in found if m.status == LoggedModelStatus.READY]


def store_base(base_dir: str | Path, *, experiment_id: str) -> str:
    """Log the base model folder to the tracking server's artifact store (as a model of `experiment_id`) unless a
    complete copy with its fingerprint is there; return the fingerprint. Ready is set after the upload, so a copy cut
    short is never used: a restart uploads the base again."""
    from mlflow.entities import LoggedModelStatus

    from llamaduo.weights import fingerprint

    fp = fingerprint(str(base_dir))
    if _bases(fp):
        return fp
    client = mlflow.MlflowClient()
    model = client.create_logged_model(experiment_id, name=BASE_MODEL_NAME, tags={BASE_TAG: fp})
    client.log_model_artifacts(model.model_id, str(base_dir))
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return fp


def cache_dir() -> Path:
    """Where fetched base models are kept, one folder per fingerprint: `$XDG_CACHE_HOME/llamaduo/base`
    (default `~/.cache/llamaduo/base`)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "llamaduo" / "base"


def fetch_base(fp: str) -> Path:
    """The base model with fingerprint `fp` as a local folder: from the cache, else downloaded from the tracking
    server's artifact store into it and checked against `fp` (a partial or altered download is refused)."""
    import fcntl

    from llamaduo.atomic import replacing_dir
    from llamaduo.weights import fingerprint

    folder = cache_dir() / fp
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{fp}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per fingerprint; a second loader waits and reads the cache
        if folder.is_dir():
            return folder
        ready = _bases(fp)
        if not ready:
            raise ModelError(f"base model {fp} is not in the artifact store of the tracking server (MLFLOW_TRACKING_URI): "
                             "the version was registered through another server, or its base was deleted there")
        with replacing_dir(folder) as tmp:
            mlflow.artifacts.download_artifacts(f"models:/{ready[0].model_id}", dst_path=str(tmp))
            got = fingerprint(str(tmp))
            if got != fp:
                raise ModelError(f"base model {fp} downloaded from {ready[0].model_id} has fingerprint {got}")
    return folder


def version_of_run(name: str, run_id: str) -> str | None:
    """The registry version of `name` registered from run `run_id`, or None."""
    found = mlflow.MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return str(min(int(v.version) for v in found)) if found else None


def champion(name: str, alias: str) -> dict | None:
    """The current champion version's tags (score, interval, cycle), or None."""
    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None
    return {"version": str(mv.version), **mv.tags}


def save_champion(name: str, alias: str, path: str | Path) -> dict:
    """Write the champion's figures (version, cycle, metric, score, 95% interval) to `path` as numbers, `{}` when
    there is none: the report stage's gate reads it (a DVC dep), so a changed champion reruns the decision. With
    them, `scores`: the champion's per-test-prompt scores of its gate metric by prompt id, from its cycle's run
    (reporting.gate.PROMPT_SCORES), which the gate pairs the next candidates with; absent when the run holds none
    (a version from before they were recorded, or registered by hand) or holds another metric's."""
    from llamaduo.atomic import write_json

    tags = champion(name, alias) or {}
    numbers = {"score": float, "ci_low": float, "ci_high": float, "cycle": int}
    record = {k: (numbers[k](v) if k in numbers else v) for k, v in tags.items()
              if k in ("version", "metric", *numbers) and v not in (None, "None")}
    if tags:
        scores = _prompt_scores(name, tags["version"])
        if scores and scores.get("metric") == record.get("metric"):
            record["scores"] = {str(k): float(v) for k, v in scores["scores"].items()}
    write_json(path, record)
    return record


def _prompt_scores(name: str, version: str) -> dict | None:
    """The per-prompt gate scores logged with the run that registered `version`, or None when it logged none."""
    import tempfile

    from llamaduo.reporting.gate import PROMPT_SCORES

    client = mlflow.MlflowClient()
    run_id = client.get_model_version(name, version).run_id
    folder, file = PROMPT_SCORES.rsplit("/", 1)
    if not run_id or file not in {Path(a.path).name for a in client.list_artifacts(run_id, folder)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, PROMPT_SCORES, tmp)).read_text())


def history(name: str) -> list[dict]:
    tags = mlflow.MlflowClient().get_registered_model(name).tags
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def promote(name: str, version: str | int, *, alias: str, reason: str) -> None:
    """Point `alias` at `version` and add the move to the history tag. Safe to repeat after a kill: the alias is set
    again and a promotion already at the end of the history is not written twice."""
    from llamaduo import faults

    version = str(version)
    client = mlflow.MlflowClient()
    try:
        client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException as exc:
        raise UserError(f"cannot promote {name} v{version}: {exc.message}") from None
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    faults.point("promote:after_alias")
    entries = history(name)
    last = entries[-1] if entries else {}
    if (last.get("action"), last.get("version"), last.get("reason")) == ("promote", version, reason):
        return
    entries.append({"version": version, "reason": reason, "time": time.time(), "action": "promote"})
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(entries))


def rollback(name: str, *, alias: str, reason: str) -> str | None:
    """Move the alias back to the champion before the current one; return that version (None: alias removed)."""
    client = mlflow.MlflowClient()
    promoted = [e["version"] for e in history(name) if e["action"] == "promote"]
    current = champion(name, alias)
    if current is None:
        raise UserError(f"registered model {name!r} has no {alias!r} alias to roll back")
    earlier = [v for v in promoted if v != current["version"]]
    target = earlier[-1] if earlier else None
    if target is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, target)
    entries = [e for e in history(name) if not (e["action"] == "promote" and e["version"] == current["version"])]
    entries.append({"version": target, "from": current["version"], "reason": reason, "time": time.time(), "action": "rollback"})
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(entries))
    return target
