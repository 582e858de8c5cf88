"""Distributed engines past one machine. `ray.py`: join the Ray cluster `cluster.address` names (curation's Ray
Data path uses it). Nothing here imports Ray at import time: the local engine needs none of it installed."""

from llamaduo.errors import UserError


class ClusterError(UserError, RuntimeError):
    """The cluster in `cluster.*` cannot be used (not installed, nothing at the address); the message names the key."""


__all__ = ["ClusterError"]
