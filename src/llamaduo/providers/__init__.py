"""Service LLMs: `get_provider` builds the class a `kind` names (the table is in `llamaduo.registries`; a vendor's
SDK is imported only when a provider of its kind is built, ~4 s), one module per vendor, and the one call
engine every provider goes through: `engine.py` (cache first, then online dispatch; re-asks of unusable
answers), `batch.py` (the vendors' Batch API), `calls.py` (what both share: bookkeeping, pacing, retries),
`usage.py` (tokens and cost), and the call cache (`cache.py`).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager

from llamaduo.errors import ParamsError, ProviderError
from llamaduo.providers.base import BatchStatus, ChatRequest, ChatResult, Choice, Provider
from llamaduo.registries import HOSTED_KINDS, PROVIDERS


def provider_class(kind: str) -> type[Provider]:
    module, _, name = PROVIDERS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def get_provider(name: str, params) -> Provider:
    """Build the provider named `name` in `providers:` of params.yaml."""
    try:
        cls = provider_class(params.kind)
    except KeyError:
        raise ParamsError(f"`providers.{name}.kind` is {params.kind!r}; valid kinds: {sorted(PROVIDERS)}") from None
    return cls(name, params)


@contextmanager
def open_providers(sections: dict, names: Iterable[str]) -> Iterator[dict[str, Provider]]:
    """The providers `names` (keys of `providers:` in params.yaml, `sections`), each built and entered once, by
    name: a judge that also answers is one provider, and a local one starts one server, not two."""
    with ExitStack() as stack:
        yield {n: stack.enter_context(get_provider(n, sections[n])) for n in dict.fromkeys(names)}


__all__ = ["HOSTED_KINDS", "PROVIDERS", "BatchStatus", "ChatRequest", "ChatResult", "Choice", "Provider", "ProviderError", "get_provider",
           "open_providers", "provider_class"]
