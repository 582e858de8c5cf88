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


def model_name(prefix: str, tasks: list[str]) -> str:
    return prefix + "+".join(tasks)


def log_and_register(*, name: str, adapter_dir: str, base_dir: str, base_md5: str, tags: dict,
                     merged_dir: str | None = None) -> str:
    """Inside the active run: log the pyfunc model and register it; return the new version number.
    With `merged_dir` (sub-models merged) the full merged model is logged instead of the adapter."""
    artifacts = {"merged": merged_dir} if merged_dir else {"adapter": adapter_dir}
    info = mlflow.pyfunc.log_model(
        name="model", python_model=LocalModel(), artifacts=artifacts,
        model_config={"base_path": str(Path(base_dir).resolve()), "base_md5": base_md5},
        # listed, not inferred: inference imports the model and probes the environment (slow, and not needed)
        pip_requirements=["torch", "transformers", "peft", "mlflow"],
        registered_model_name=name,
    )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    for k, v in tags.items():
        if v is not None:  # an absent figure is an absent tag, never the string "None"
            client.set_model_version_tag(name, version, k, str(v))
    return version


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
    version = str(version)
    client = mlflow.MlflowClient()
    try:
        client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException as exc:
        raise UserError(f"cannot promote {name} v{version}: {exc.message}") from None
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    entries = history(name) + [{"version": version, "reason": reason, "time": time.time(), "action": "promote"}]
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
