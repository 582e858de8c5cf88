"""Anthropic: the Messages API (structured output through one forced tool) and Message Batches.

The Messages API has no `n`: the engine sends M samples as M calls, each keyed by its sample index.
"""

from __future__ import annotations

import json

import anthropic
from anthropic.types import Message

from llamaduo.providers.base import BatchStatus, ChatRequest, ChatResult, Choice, Provider, ProviderError

STOP_REASONS = {"max_tokens": "length", "refusal": "refusal", "end_turn": "stop", "tool_use": "stop",
                "stop_sequence": "stop", "pause_turn": "stop"}


class AnthropicProvider(Provider):
    default_key_env = ("ANTHROPIC_API_KEY",)
    supports_n = False

    def __init__(self, name: str, params):
        super().__init__(name, params)
        self._client: anthropic.AsyncAnthropic | None = None

    def client(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            # max_retries=0: the call engine retries, the same way for every provider
            self._client = anthropic.AsyncAnthropic(api_key=self.api_key(), base_url=self.params.base_url,
                                                    max_retries=0, timeout=self.params.timeout_s)
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def body(self, request: ChatRequest) -> dict:
        """Messages API parameters (also the `params` of one Message Batches request)."""
        if request.n != 1:
            raise ValueError("the Messages API answers one sample per call; the engine splits n")
        system = "\n\n".join(c for r, c in request.messages if r == "system")
        # no temperature: the current Messages API version (the SDK's default since 2.0) rejects every sampling
        # parameter with a 400; the model samples on its own, so M calls still give M different judgments
        body = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": r, "content": c} for r, c in request.messages if r != "system"],
        }
        if system:
            body["system"] = system
        if request.json_schema is not None:
            # a tool whose input is the answer, and tool_choice forcing it: the answer is the tool's input
            body["tools"] = [{"name": request.schema_name, "description": "Record the answer in this structure.",
                              "input_schema": request.json_schema}]
            body["tool_choice"] = {"type": "tool", "name": request.schema_name}
        return body

    def parse(self, msg: Message, schema_name: str | None = None) -> ChatResult:
        tool = next((b for b in msg.content if b.type == "tool_use" and (schema_name is None or b.name == schema_name)), None)
        if tool is not None:
            text = json.dumps(tool.input, ensure_ascii=False)
        else:
            text = "".join(b.text for b in msg.content if b.type == "text")
        finish = STOP_REASONS.get(msg.stop_reason or "", msg.stop_reason)
        refusal = text if finish == "refusal" else None
        u = msg.usage
        # cache writes and reads are billed input too
        inp = u.input_tokens + (u.cache_creation_input_tokens or 0) + (u.cache_read_input_tokens or 0)
        return ChatResult([Choice(text="" if refusal else text, finish_reason=finish, refusal=refusal)], inp, u.output_tokens,
                          model=msg.model or "")

    def translate(self, exc: Exception) -> ProviderError:
        if isinstance(exc, anthropic.APIStatusError):
            return self.error(exc.message, status=exc.status_code, headers=exc.response.headers)
        if isinstance(exc, anthropic.APIConnectionError):  # includes APITimeoutError
            return self.error(f"{type(exc).__name__}: {exc}", retryable=True)
        if isinstance(exc, (anthropic.APIResponseValidationError, json.JSONDecodeError)):
            return self.error(f"unreadable response ({type(exc).__name__}: {exc})", retryable=True)
        return self.error(f"{type(exc).__name__}: {exc}", retryable=False)

    async def chat(self, request: ChatRequest) -> ChatResult:
        try:
            msg = await self.client().messages.create(**self.body(request))
        except (anthropic.AnthropicError, json.JSONDecodeError) as exc:
            raise self.translate(exc) from None
        return self.parse(msg, request.json_schema and request.schema_name)

    async def batch_submit(self, items: list[tuple[str, ChatRequest]]) -> str:
        try:
            job = await self.client().messages.batches.create(
                requests=[{"custom_id": cid, "params": self.body(req)} for cid, req in items])
        except anthropic.AnthropicError as exc:
            raise self.translate(exc) from None
        return job.id

    async def batch_status(self, job_id: str) -> BatchStatus:
        try:
            job = await self.client().messages.batches.retrieve(job_id)
        except anthropic.AnthropicError as exc:
            raise self.translate(exc) from None
        return BatchStatus(done=job.processing_status == "ended", state=job.processing_status)

    async def batch_results(self, job_id: str) -> dict[str, ChatResult | ProviderError]:
        out: dict[str, ChatResult | ProviderError] = {}
        try:
            async for item in await self.client().messages.batches.results(job_id):
                r = item.result
                if r.type == "succeeded":
                    out[item.custom_id] = self.parse(r.message)
                elif r.type == "errored":
                    err = getattr(r.error, "error", None)
                    out[item.custom_id] = self.error(f"batch item errored: {getattr(err, 'message', r.error)}",
                                                     retryable=getattr(err, "type", "") in {"overloaded_error", "api_error"})
                else:  # canceled or expired: asking again later can work
                    out[item.custom_id] = self.error(f"batch item {r.type}", retryable=True)
        except anthropic.AnthropicError as exc:
            raise self.translate(exc) from None
        return out
