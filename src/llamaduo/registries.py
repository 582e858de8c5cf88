"""The registries' name tables: every name params.yaml may give a provider `kind` or a `merge.method`, and where
its class lives (`module:Class`, imported only when that name is asked for).

This module imports nothing. config.py builds its Literal types from these tables and providers/ and merging/
resolve names through them, so the params schema, and with it every stage, depends on no provider or merge code.
"""

PROVIDERS: dict[str, str] = {
    "local": "llamaduo.providers.local:LocalVLLMProvider",
    "openai_compatible": "llamaduo.providers.openai_compatible:OpenAICompatibleProvider",
    "openai": "llamaduo.providers.openai_chat:OpenAIProvider",
    "anthropic": "llamaduo.providers.anthropic_messages:AnthropicProvider",
    "gemini": "llamaduo.providers.gemini:GeminiProvider",
}

# the kinds with a Batch API and a default API-key variable (the vendors' own services)
HOSTED_KINDS = ("openai", "anthropic", "gemini")

MERGERS: dict[str, str] = {
    "weighted_average": "llamaduo.merging.weighted_average:WeightedAverage",
    "parameter_selection": "llamaduo.merging.parameter_selection:ParameterSelection",
}
