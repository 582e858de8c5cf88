"""Weighted-average merging: base + the weighted sum of the task vectors (equal weights: the plain mean of the sub-models)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llamaduo.merging.base import Merger


class WeightedAverage(Merger):
    name = "weighted_average"
    options = ("weights",)

    def __init__(self, *, seed: int = 0, weights: Sequence[float] | None = None):
        super().__init__(seed=seed)
        self.weights = list(weights) if weights is not None else None

    def merge(self, base, models, name):
        k = len(models)
        weights = self.weights or [1.0 / k] * k
        if len(weights) != k:
            raise ValueError(f"`merge.weights` has {len(weights)} weights for {k} sub-models")
        # float32 accumulation: summing k low-precision deltas in bf16 would lose their small digits
        base32 = base.to(torch.float32)
        acc = torch.zeros_like(base32)
        for w, t in zip(weights, models):
            acc += w * (t.to(torch.float32) - base32)
        return (base32 + acc).to(models[0].dtype)
