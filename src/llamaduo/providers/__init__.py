"""Service LLMs: the provider registry (`kind` in params -> the class that speaks to that service), the one call
engine every provider goes through (`engine.py`: cache, concurrency, pacing, retries, Batch API, usage,
re-asks of unusable answers) and the call cache (`cache.py`). `config.py` reads REGISTRY for the valid kinds,
so this module stays light: the vendor SDKs are imported only when a provider of their kind is built (~4 s).
"""

from __future__ import annotations

import importlib

from llamaduo.errors import ParamsError, ProviderError
from llamaduo.providers.base import BatchStatus, ChatRequest, ChatResult, Choice, Provider

REGISTRY: dict[str, str] = {
    "local": "llamaduo.providers.local:LocalVLLMProvider",
    "openai_compatible": "llamaduo.providers.openai_compatible:OpenAICompatibleProvider",
    "openai": "llamaduo.providers.openai_chat:OpenAIProvider",
    "anthropic": "llamaduo.providers.anthropic_messages:AnthropicProvider",
    "gemini": "llamaduo.providers.gemini:GeminiProvider",
}
# the kinds with a Batch API and a default API-key variable (the vendors' own services)
HOSTED_KINDS = ("openai", "anthropic", "gemini")


def provider_class(kind: str) -> type[Provider]:
    module, _, name = REGISTRY[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def get_provider(name: str, params) -> Provider:
    """Build the provider named `name` in `providers:` of params.yaml."""
    try:
        cls = provider_class(params.kind)
    except KeyError:
        raise ParamsError(f"`providers.{name}.kind` is {params.kind!r}; valid kinds: {sorted(REGISTRY)}") from None
    return cls(name, params)


__all__ = ["HOSTED_KINDS", "REGISTRY", "BatchStatus", "ChatRequest", "ChatResult", "Choice", "Provider", "ProviderError", "get_provider",
           "provider_class"]
