"""Any server that speaks the OpenAI Chat Completions wire format (vLLM, Ollama, llama.cpp, LM Studio)."""

from __future__ import annotations

import os

import openai

from llamaduo.providers.base import ChatRequest, ChatResult, Choice, Provider, ProviderError


class OpenAICompatibleProvider(Provider):
    def __init__(self, name: str, params, base_url: str | None = None):
        super().__init__(name, params)
        self.base_url = base_url or params.base_url
        self._client: openai.AsyncOpenAI | None = None

    def _api_key(self) -> str:
        env = self.params.api_key_env
        if env is None:
            return "unused"  # local servers accept any key; the SDK insists on one
        key = os.environ.get(env)
        if not key:
            raise ProviderError(f"provider `{self.name}`: the environment variable {env} (named by `api_key_env`) is not set")
        return key

    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=self._api_key(),
                max_retries=self.params.max_retries, timeout=self.params.timeout_s,
            )
        return self._client

    def served_model(self) -> str:
        return self.params.model

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def ensure_ready(self) -> None:
        """Hook for providers that must start something before the first call."""

    async def chat(self, request: ChatRequest) -> ChatResult:
        await self.ensure_ready()
        kwargs = {}
        if request.json_schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": request.json_schema, "strict": True},
            }
        try:
            resp = await self.client().chat.completions.create(
                model=self.served_model(),
                messages=[{"role": r, "content": c} for r, c in request.messages],
                temperature=request.temperature,
                max_tokens=request.max_tokens,
                n=request.n,
                **kwargs,
            )
        except openai.APIStatusError as exc:
            raise ProviderError(f"provider `{self.name}` (model {self.params.model}): HTTP {exc.status_code}: {exc.message}") from None
        except openai.APIError as exc:
            raise ProviderError(f"provider `{self.name}` (model {self.params.model}): {type(exc).__name__}: {exc}") from None
        choices = [Choice(text=c.message.content or "", finish_reason=c.finish_reason) for c in resp.choices]
        usage = resp.usage
        return ChatResult(choices, usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)
