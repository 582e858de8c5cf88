"""The services stage's output: what the service stages' answers depend on in `providers`.

DVC tracks the `providers` section whole in the `services` stage, which writes these fields to
data/services.json; synthesize, baseline and judge depend on that file instead of on the section, so a
runtime knob (concurrency, a timeout, retries) reruns none of them.
"""

from __future__ import annotations

from llamaduo.config import Params, result_dump
from llamaduo.urls import mask_url


def services(params: Params) -> dict:
    """Each provider's fields without the runtime ones. A local server's `server.dtype` is in it as loading
    resolved it (its own setting, else `compute.dtype`), so a new compute dtype reruns the service stages too.
    Credentials written into a `base_url` are masked: the file is committed, and a new key is the same service."""
    out = {name: result_dump(p) for name, p in sorted(params.providers.items())}
    for section in out.values():
        if section.get("base_url"):
            section["base_url"] = mask_url(section["base_url"])
    return out
