"""The params keys a project's dvc.yaml tracks, held against its params.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from llamaduo.config import Params


def untracked_keys(params_file: str | Path = "params.yaml", dvc_file: str | Path = "dvc.yaml") -> list[str]:
    """The params keys `dvc.yaml` lists that params.yaml does not set, each with its default. DVC needs every
    key it tracks to be present in the file (a schema default is not enough), so `llamaduo check` and
    `llamaduo run` name them all before DVC stops on the first."""
    raw = yaml.safe_load(Path(params_file).read_text()) or {}
    stages = (yaml.safe_load(Path(dvc_file).read_text()) or {}).get("stages", {}) if Path(dvc_file).is_file() else {}
    tracked = dict.fromkeys(k for body in stages.values() for k in body.get("params", []) if isinstance(k, str))
    defaults = Params().model_dump()
    out = []
    for key in tracked:
        here, default = raw, defaults
        for part in key.split("."):
            here = here.get(part, KeyError) if isinstance(here, dict) else KeyError
            default = default.get(part) if isinstance(default, dict) else None
        if here is KeyError:
            out.append(f"`{key}` (default: {json.dumps(default)})")
    return out
