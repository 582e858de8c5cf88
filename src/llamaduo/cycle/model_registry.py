"""The model registry: each cycle's adapter (plus a reference to its base) as a version; the alias marks the champion.

Promotions and rollbacks keep their history (version, reason, time) as a tag of the registered model, so
the alias can be moved back and every move is explained.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow

from llamaduo.errors import UserError

HISTORY_TAG = "llamaduo.champion_history"


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
            self.model = fold(context.model_config["base_path"], folder).eval()
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
    """Inside the active run: log the pyfunc model and register it as a version carrying `tags`; return its number.
    With `merged_dir` (sub-models merged) the full merged model is logged instead of the adapter.

    Idempotent per run: when this run already has a registered version (a restart after a kill between registering
    and recording it), that version is returned and nothing is registered twice."""
    run_id = mlflow.active_run().info.run_id
    existing = version_of_run(name, run_id)
    if existing is not None:
        return existing
    artifacts = {"merged": merged_dir} if merged_dir else {"adapter": adapter_dir}
    info = mlflow.pyfunc.log_model(
        name="model", python_model=LocalModel(), artifacts=artifacts,
        model_config={"base_path": str(Path(base_dir).resolve()), "base_md5": base_md5},
        # listed, not inferred: inference imports the model and probes the environment (slow, and not needed)
        pip_requirements=["torch", "transformers", "peft", "mlflow"],
        signature=_signature(),
    )
    # the tags are created with the version (one call), so no version exists without its cycle and run;
    # an absent figure is an absent tag, never the string "None"
    mv = mlflow.register_model(info.model_uri, name, tags={k: str(v) for k, v in tags.items() if v is not None})
    return str(mv.version)


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
    there is none: the report stage's gate reads it (a DVC dep), so a changed champion reruns the decision."""
    from llamaduo.atomic import write_json

    tags = champion(name, alias) or {}
    numbers = {"score": float, "ci_low": float, "ci_high": float, "cycle": int}
    record = {k: (numbers[k](v) if k in numbers else v) for k, v in tags.items()
              if k in ("version", "metric", *numbers) and v not in (None, "None")}
    write_json(path, record)
    return record


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
