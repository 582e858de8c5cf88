"""Provider registry: `kind` in params -> the class that speaks to that service."""

from __future__ import annotations

from llamaduo.providers.anthropic_messages import AnthropicProvider
from llamaduo.providers.base import BatchStatus, ChatRequest, ChatResult, Choice, Provider, ProviderError
from llamaduo.providers.gemini import GeminiProvider
from llamaduo.providers.local import LocalVLLMProvider
from llamaduo.providers.openai_chat import OpenAIProvider
from llamaduo.providers.openai_compatible import OpenAICompatibleProvider

REGISTRY: dict[str, type[Provider]] = {
    "local": LocalVLLMProvider,
    "openai_compatible": OpenAICompatibleProvider,
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
}


def get_provider(name: str, params) -> Provider:
    """Build the provider named `name` in `providers:` of params.yaml."""
    try:
        cls = REGISTRY[params.kind]
    except KeyError:
        raise ValueError(f"`providers.{name}.kind` is {params.kind!r}; valid kinds: {sorted(REGISTRY)}") from None
    return cls(name, params)


__all__ = ["BatchStatus", "ChatRequest", "ChatResult", "Choice", "Provider", "ProviderError", "REGISTRY", "get_provider"]
