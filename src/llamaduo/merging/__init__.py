"""Merging sub-models trained on different data orders into one model (mergekit's shape: one module per method).

    merger = get_merger("parameter_selection", seed=0, resample=2)
    merge_checkpoints(base_dir, [full_model_dir, ...], out_dir, merger)
"""

from __future__ import annotations

from llamaduo.merging.base import Merger
from llamaduo.merging.checkpoint import merge_checkpoints
from llamaduo.merging.parameter_selection import ParameterSelection
from llamaduo.merging.weighted_average import WeightedAverage

MERGERS: dict[str, type[Merger]] = {
    WeightedAverage.name: WeightedAverage,
    ParameterSelection.name: ParameterSelection,
}


def get_merger(name: str, **options) -> Merger:
    """The merge method `name` built with `options`; an unknown name lists the valid ones."""
    try:
        cls = MERGERS[name]
    except KeyError:
        raise ValueError(f"unknown merge method {name!r} (valid: {', '.join(sorted(MERGERS))})") from None
    return cls(**options)


def from_params(p) -> Merger:
    """The merger `merge.method` names, with the `merge.*` options it takes."""
    cls = MERGERS.get(p.method)
    return get_merger(p.method, seed=p.seed, **({k: getattr(p, k) for k in cls.options} if cls else {}))


__all__ = ["MERGERS", "Merger", "from_params", "get_merger", "merge_checkpoints"]
