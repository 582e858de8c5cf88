"""Provider registry: `kind` in params -> the class that speaks to that service.

Each class is imported when a provider of its kind is built: the three vendor SDKs take ~4 s to import, and
most stages (and every stage's error handling, which needs only `ProviderError`) use none of them.
"""

from __future__ import annotations

import importlib

from llamaduo.providers.base import BatchStatus, ChatRequest, ChatResult, Choice, Provider, ProviderError

REGISTRY: dict[str, str] = {
    "local": "llamaduo.providers.local:LocalVLLMProvider",
    "openai_compatible": "llamaduo.providers.openai_compatible:OpenAICompatibleProvider",
    "openai": "llamaduo.providers.openai_chat:OpenAIProvider",
    "anthropic": "llamaduo.providers.anthropic_messages:AnthropicProvider",
    "gemini": "llamaduo.providers.gemini:GeminiProvider",
}


def provider_class(kind: str) -> type[Provider]:
    module, _, name = REGISTRY[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def get_provider(name: str, params) -> Provider:
    """Build the provider named `name` in `providers:` of params.yaml."""
    try:
        cls = provider_class(params.kind)
    except KeyError:
        raise ValueError(f"`providers.{name}.kind` is {params.kind!r}; valid kinds: {sorted(REGISTRY)}") from None
    return cls(name, params)


__all__ = ["BatchStatus", "ChatRequest", "ChatResult", "Choice", "Provider", "ProviderError", "REGISTRY", "get_provider", "provider_class"]
