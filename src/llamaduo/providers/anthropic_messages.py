"""Anthropic: the Messages API (structured output through one forced tool) and Message Batches.

The Messages API has no `n`: the engine sends M samples as M calls, each keyed by its sample index.

Routes: Anthropic's API (or a gateway at `base_url`), Vertex AI (`cloud: vertex`: the SDK's AnthropicVertex,
Google application default credentials) and Bedrock (`cloud: bedrock`: AnthropicBedrock, requests signed from
the standard AWS credential chain). The same Messages body goes everywhere; each client moves the model into
the cloud's path and adds its `anthropic_version`. Message Batches exist on Anthropic's API only.
"""

from __future__ import annotations

import json

import anthropic
from anthropic.types import Message

from llamaduo.providers.base import BatchStatus, ChatRequest, ChatResult, Choice, Provider, ProviderError
from llamaduo.providers.routes import CloudRoute, wrong_path

STOP_REASONS = {"max_tokens": "length", "refusal": "refusal", "end_turn": "stop", "tool_use": "stop",
                "stop_sequence": "stop", "pause_turn": "stop"}


class AnthropicProvider(CloudRoute, Provider):
    default_key_env = ("ANTHROPIC_API_KEY",)
    supports_n = False

    def __init__(self, name: str, params):
        super().__init__(name, params)
        self._client: anthropic.AsyncAnthropic | None = None
        if params.cloud is not None:
            self.default_key_env = ()  # the cloud's credential chain, read by its SDK client

    def client(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            p = self.params
            # max_retries=0: the call engine retries, the same way for every provider
            common = dict(base_url=self.request_url(), max_retries=0, timeout=p.timeout_s)
            try:
                if p.cloud == "vertex":
                    # region/project null: the SDK's CLOUD_ML_REGION / ANTHROPIC_VERTEX_PROJECT_ID or the credentials' project
                    kw = {k: v for k, v in (("region", p.region), ("project_id", p.project)) if v is not None}
                    self._client = anthropic.AsyncAnthropicVertex(**kw, **common)
                elif p.cloud == "bedrock":
                    # credentials: boto3's chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, AWS_PROFILE,
                    # instance roles) or AWS_BEARER_TOKEN_BEDROCK, read by the SDK; region null = AWS_REGION
                    self._client = anthropic.AsyncAnthropicBedrock(aws_region=p.region, **common)
                else:
                    self._client = anthropic.AsyncAnthropic(api_key=self.api_key(), **common)
            except ValueError as exc:  # e.g. no region: the SDK names the setting and its environment variable
                raise ProviderError(self.redact(f"provider `{self.name}` (model {self.model}): {exc}"), fatal=True) from None
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
        return wrong_path(self, self.sdk_error(exc, anthropic), exc)

    async def chat(self, request: ChatRequest) -> ChatResult:
        try:
            msg = await self.client().messages.create(**self.body(request))
        except ProviderError:
            raise
        except (anthropic.AnthropicError, json.JSONDecodeError) as exc:
            raise self.translate(exc) from None
        except Exception as exc:
            if self.params.cloud is None or not _credential_failure(exc):
                raise
            # the cloud client signs each request: without credentials no call can pass
            err = self.error(f"{self.params.cloud} credentials: {type(exc).__name__}: {exc}", retryable=False)
            err.fatal = True
            raise err from None
        return self.parse(msg, request.json_schema and request.schema_name)

    async def batch_submit(self, items: list[tuple[str, ChatRequest]], tag: str = "") -> str:
        # Message Batches hold no client metadata: `batch_find` recognises a job by its custom ids (the tag is unused)
        try:
            job = await self.client().messages.batches.create(
                requests=[{"custom_id": cid, "params": self.body(req)} for cid, req in items])
        except anthropic.AnthropicError as exc:
            raise self.translate(exc) from None
        return job.id

    async def batch_find(self, tag: str, custom_ids: list[str], since: float) -> str | None:
        """A job made since `since` with exactly these custom ids. The ids of a job are readable only once it has
        ended; a running one matches by its request count, and two such candidates are not told apart: an error,
        rather than a guess or a second payment."""
        want, running = set(custom_ids), []
        try:
            async for job in self.client().messages.batches.list(limit=100):
                if job.created_at.timestamp() < since:  # listed newest first
                    break
                c = job.request_counts
                if c.processing + c.succeeded + c.errored + c.canceled + c.expired != len(want):
                    continue
                if job.processing_status != "ended":
                    running.append(job.id)
                    continue
                ids = {item.custom_id async for item in await self.client().messages.batches.results(job.id)}
                if ids == want:
                    return job.id
        except anthropic.AnthropicError as exc:
            raise self.translate(exc) from None
        if len(running) > 1:
            raise self.error(f"cannot tell which of the running batches {', '.join(running)} (each of {len(want)} "
                             "requests) holds this run's earlier submission; rerun once they have ended", retryable=True)
        return running[0] if running else None

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


def _credential_failure(exc: Exception) -> bool:
    """Whether `exc` is a cloud client failing to find or use credentials (botocore, google-auth, or the SDK's
    own RuntimeError when the AWS chain resolves none)."""
    module = type(exc).__module__ or ""
    if module.startswith(("botocore", "google.auth")):
        return True
    return isinstance(exc, RuntimeError) and "credentials" in str(exc).lower()
