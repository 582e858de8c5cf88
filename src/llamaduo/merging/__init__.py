"""Merging sub-models trained on different data orders into one model (mergekit's shape: one module per method).

    merger = get_merger("parameter_selection", seed=0, resample=2)
    merge_checkpoints(base_dir, [full_model_dir, ...], out_dir, merger)

`merge` (merging/run.py) is the merge stage: each sub-model's adapter folded into the base, their task
vectors merged tensor by tensor, and every sub-model's and the merged model's validation loss.
The method names and the class behind each are a table in `llamaduo.registries`; this module imports no method
(nor torch) until one is asked for.
"""

from __future__ import annotations

import importlib

from llamaduo.errors import ParamsError
from llamaduo.registries import MERGERS


def merger_class(name: str):
    """The Merger subclass registered as `name`; an unknown name lists the valid ones."""
    try:
        module, _, cls = MERGERS[name].partition(":")
    except KeyError:
        raise ParamsError(f"`merge.method`: unknown merge method {name!r} (valid: {', '.join(sorted(MERGERS))})") from None
    return getattr(importlib.import_module(module), cls)


def get_merger(name: str, **options):
    """The merge method `name` built with `options`."""
    return merger_class(name)(**options)


def from_params(p):
    """The merger `merge.method` names, with the `merge.*` options it takes."""
    cls = merger_class(p.method)
    return cls(seed=p.seed, **{k: getattr(p, k) for k in cls.options})


__all__ = ["MERGERS", "from_params", "get_merger", "merger_class"]
