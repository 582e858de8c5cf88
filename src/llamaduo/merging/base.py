"""What every merge method is: a rule turning the base tensor and the k sub-model tensors at one name into one tensor.

Methods see one tensor name at a time (the streaming in `checkpoint.py` never holds a whole model), and draw
their randomness from a generator seeded by (seed, tensor name): the result of a tensor does not depend on
which tensors came before it, so a merge is reproducible whatever the file layout.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch


class Merger(ABC):
    name: ClassVar[str]
    # the `merge.*` params the method takes, passed to __init__ by name
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, seed: int = 0):
        self.seed = seed

    def generator(self, tensor_name: str) -> torch.Generator:
        digest = hashlib.sha256(f"{self.seed}/{tensor_name}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)

    @abstractmethod
    def merge(self, base: torch.Tensor, models: Sequence[torch.Tensor], name: str) -> torch.Tensor:
        """The merged tensor at `name`, same shape and dtype as `models[0]`."""
