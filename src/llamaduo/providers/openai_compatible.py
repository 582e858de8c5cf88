"""Any server that speaks the OpenAI Chat Completions wire format (vLLM, Ollama, llama.cpp, LM Studio)."""

from __future__ import annotations

import json

import openai
from openai.types.chat import ChatCompletion

from llamaduo.providers.base import ChatRequest, ChatResult, Choice, Provider, ProviderError
from llamaduo.urls import mask_url


class OpenAICompatibleProvider(Provider):
    def __init__(self, name: str, params, base_url: str | None = None):
        super().__init__(name, params)
        self.base_url = base_url or self.request_url()
        self._client: openai.AsyncOpenAI | None = None

    def identity(self) -> str:
        # another server under the same model name is another model; the identity is stored (cache, judgment rows),
        # so credentials written into the URL are masked: the same server with a new key is the same model
        return f"{self.params.kind}:{mask_url(self.base_url)}:{self.params.model}"

    def api_key(self) -> str:
        return super().api_key() or "unused"  # local servers accept any key; the SDK insists on one

    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            # max_retries=0: the call engine retries, the same way for every provider
            self._client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key(), max_retries=0,
                                              timeout=self.params.timeout_s)
        return self._client

    def served_model(self) -> str:
        return self.params.model

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def body(self, request: ChatRequest) -> dict:
        """The Chat Completions request body (also one line of an OpenAI batch file)."""
        body = {
            "model": self.served_model(),
            "messages": [{"role": r, "content": c} for r, c in request.messages],
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "n": request.n,
        }
        if request.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": request.json_schema, "strict": True},
            }
        return body

    def parse(self, resp: ChatCompletion) -> ChatResult:
        choices = []
        for c in sorted(resp.choices, key=lambda c: c.index):
            refusal = getattr(c.message, "refusal", None)
            finish = "refusal" if refusal and not c.message.content else c.finish_reason
            choices.append(Choice(text=c.message.content or "", finish_reason=finish, refusal=refusal))
        usage = resp.usage
        return ChatResult(choices, usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0,
                          model=resp.model or "")

    def translate(self, exc: Exception) -> ProviderError:
        """The SDK's exception as a ProviderError that says whether a retry can help."""
        return self.sdk_error(exc, openai)

    async def chat(self, request: ChatRequest) -> ChatResult:
        await self.ensure_ready()
        try:
            resp = await self.client().chat.completions.create(**self.body(request))
        except ProviderError:
            raise
        except (openai.OpenAIError, json.JSONDecodeError) as exc:
            raise self.translate(exc) from None
        if not resp.choices:
            raise self.error("the response has no choices", retryable=True)
        return self.parse(resp)
