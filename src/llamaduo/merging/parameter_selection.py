"""Parameter-selection merging (Ju et al., "Enhancing LLM Fine-Tuning via Selective Parameter Merging", eq. 2-3).

Each element comes whole from one sub-model, drawn with equal probability. With `resample = n`, an element
whose drawn sub-model left it equal to the base (task vector 0 there) is redrawn from the pool, up to n
times, so the merged task vector keeps as many of the sub-models' changes as the draws find.
"""

from __future__ import annotations

import torch

from llamaduo.merging.base import Merger


class ParameterSelection(Merger):
    name = "parameter_selection"
    options = ("resample",)

    def __init__(self, *, seed: int = 0, resample: int = 0):
        super().__init__(seed=seed)
        if resample < 0:
            raise ValueError(f"`merge.resample` must be >= 0, got {resample}")
        self.resample = resample

    def merge(self, base, models, name):
        g = self.generator(name)
        stacked = torch.stack(list(models))
        k = stacked.shape[0]
        pick = torch.randint(k, base.shape, generator=g)
        if self.resample:
            changed = stacked != base.to(stacked.dtype)  # task vector != 0, without forming it
            for _ in range(self.resample):
                unchanged = ~changed.gather(0, pick.unsqueeze(0)).squeeze(0)
                # every round draws a full tensor (the paper's parallel resampling); only unchanged positions take it
                pick = torch.where(unchanged, torch.randint(k, base.shape, generator=g), pick)
        return stacked.gather(0, pick.unsqueeze(0)).squeeze(0)
