"""Google Gemini through the google-genai SDK: JSON-schema output, `candidate_count` for n, and batch mode.

Routes: the Gemini API (an API key), a gateway at `base_url` (with the `api_version` it serves), or Vertex AI
(`cloud: vertex`: project, region, Google application default credentials). The SDK builds every path.
"""

from __future__ import annotations

import asyncio
import json
import logging

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from llamaduo.providers.base import BatchStatus, ChatRequest, ChatResult, Choice, Provider, ProviderError
from llamaduo.providers.routes import CloudRoute, wrong_path

FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "PROHIBITED_CONTENT": "content_filter",
          "BLOCKLIST": "content_filter", "SPII": "content_filter", "RECITATION": "content_filter"}
# the SDK warns on every multi-candidate response (meant for `.text` users); we read every candidate
logging.getLogger("google_genai.types").setLevel(logging.ERROR)
JOB_FINISHED = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}

try:
    from google.auth import exceptions as google_auth_errors  # Vertex AI: the credential chain's failures
    _CREDENTIALS: tuple[type[Exception], ...] = (google_auth_errors.GoogleAuthError,)
except ImportError:  # pragma: no cover
    _CREDENTIALS = ()

try:  # transport failures, whichever HTTP library the SDK picked (aiohttp when installed, else httpx)
    import aiohttp
    _TRANSPORT = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)
except ImportError:  # pragma: no cover
    _TRANSPORT = (asyncio.TimeoutError, ConnectionError)
try:
    import httpx
    _TRANSPORT = _TRANSPORT + (httpx.TransportError,)
except ImportError:  # pragma: no cover
    pass


class GeminiProvider(CloudRoute, Provider):
    default_key_env = ("GEMINI_API_KEY", "GOOGLE_API_KEY")

    def __init__(self, name: str, params):
        super().__init__(name, params)
        self._client: genai.Client | None = None
        if params.cloud == "vertex":
            self.default_key_env = ()  # Vertex AI authenticates with Google credentials, not an API key

    def client(self) -> genai.Client:
        if self._client is None:
            # attempts=1: the call engine retries (this also stops the SDK's own implicit reconnect retry);
            # api_version None keeps the SDK's default (v1 on the Gemini API, v1beta1 on Vertex AI)
            opts = types.HttpOptions(base_url=self.request_url(), api_version=self.params.api_version,
                                     timeout=int(self.params.timeout_s * 1000), retry_options=types.HttpRetryOptions(attempts=1))
            try:
                if self.params.cloud == "vertex":
                    # credentials: google-auth's application default chain (GOOGLE_APPLICATION_CREDENTIALS, gcloud, the
                    # metadata server), read by the SDK itself at the first call; never an API key from params
                    self._client = genai.Client(vertexai=True, project=self.params.project, location=self.params.region,
                                                http_options=opts)
                else:
                    self._client = genai.Client(api_key=self.api_key(), http_options=opts)
            except ValueError as exc:  # e.g. Vertex AI without a project: the SDK says which setting is missing
                raise ProviderError(self.redact(f"provider `{self.name}` (model {self.model}): {exc}"), fatal=True) from None
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aio.aclose()

    def contents_and_config(self, request: ChatRequest) -> tuple[list[dict], dict]:
        system = "\n\n".join(c for r, c in request.messages if r == "system")
        contents = [{"role": "model" if r == "assistant" else "user", "parts": [{"text": c}]}
                    for r, c in request.messages if r != "system"]
        config = {"temperature": request.temperature, "max_output_tokens": request.max_tokens}
        if request.n != 1:
            config["candidate_count"] = request.n
        if system:
            config["system_instruction"] = system
        if request.json_schema is not None:
            config["response_mime_type"] = "application/json"
            config["response_json_schema"] = request.json_schema
        return contents, config

    def parse(self, resp: types.GenerateContentResponse) -> ChatResult:
        choices = []
        for cand in sorted(resp.candidates or [], key=lambda c: c.index or 0):
            parts = cand.content.parts if cand.content and cand.content.parts else []
            text = "".join(p.text for p in parts if p.text and not p.thought)
            reason = cand.finish_reason.value if hasattr(cand.finish_reason, "value") else cand.finish_reason
            choices.append(Choice(text=text, finish_reason=FINISH.get(reason or "", (reason or "").lower() or None)))
        if not choices and resp.prompt_feedback and resp.prompt_feedback.block_reason:
            # the prompt itself was blocked: no candidate at all, a refusal
            why = str(resp.prompt_feedback.block_reason)
            choices = [Choice(text="", finish_reason="refusal", refusal=f"prompt blocked: {why}")]
        u = resp.usage_metadata
        inp = (u.prompt_token_count or 0) if u else 0
        out = ((u.candidates_token_count or 0) + (u.thoughts_token_count or 0)) if u else 0  # thinking is billed as output
        return ChatResult(choices, inp, out, model=resp.model_version or "")

    def translate(self, exc: Exception) -> ProviderError:
        if isinstance(exc, genai_errors.APIError):
            headers = getattr(getattr(exc, "response", None), "headers", None)
            err = self.error(exc.message or str(exc), status=exc.code, headers=headers)
            return wrong_path(self, err, exc, api_version=self.params.api_version)
        if isinstance(exc, _CREDENTIALS):  # no credentials, or the token endpoint refused them: no call can pass
            err = self.error(f"Google credentials: {type(exc).__name__}: {exc}", retryable=False)
            err.fatal = True
            return err
        if isinstance(exc, _TRANSPORT):
            return self.error(f"{type(exc).__name__}: {exc}", retryable=True)
        if isinstance(exc, json.JSONDecodeError):
            return self.error(f"unreadable response ({type(exc).__name__}: {exc})", retryable=True)
        return self.error(f"{type(exc).__name__}: {exc}", retryable=False)

    async def chat(self, request: ChatRequest) -> ChatResult:
        contents, config = self.contents_and_config(request)
        try:
            resp = await self.client().aio.models.generate_content(model=self.model, contents=contents, config=config)
        except ProviderError:
            raise
        except (genai_errors.APIError, json.JSONDecodeError, *_TRANSPORT, *_CREDENTIALS) as exc:
            raise self.translate(exc) from None
        result = self.parse(resp)
        if not result.choices:
            raise self.error("the response has no candidates", retryable=True)
        return result

    async def batch_submit(self, items: list[tuple[str, ChatRequest]], tag: str = "") -> str:
        src = []
        for cid, req in items:
            contents, config = self.contents_and_config(req)
            src.append({"contents": contents, "config": config, "metadata": {"key": cid}})
        try:
            # the idempotency tag is the job's display name, where `batch_find` looks for it
            job = await self.client().aio.batches.create(model=self.model, src=src,
                                                         config={"display_name": tag} if tag else None)
        except (genai_errors.APIError, *_TRANSPORT) as exc:
            raise self.translate(exc) from None
        return job.name

    async def batch_find(self, tag: str, custom_ids: list[str], since: float) -> str | None:
        try:
            async for job in await self.client().aio.batches.list(config={"page_size": 100}):
                if job.display_name == tag:
                    return job.name
                if job.create_time and job.create_time.timestamp() < since:  # listed newest first
                    return None
        except (genai_errors.APIError, *_TRANSPORT) as exc:
            raise self.translate(exc) from None
        return None

    async def _job(self, job_id: str) -> types.BatchJob:
        try:
            return await self.client().aio.batches.get(name=job_id)
        except (genai_errors.APIError, *_TRANSPORT) as exc:
            raise self.translate(exc) from None

    async def batch_status(self, job_id: str) -> BatchStatus:
        job = await self._job(job_id)
        state = job.state.value if hasattr(job.state, "value") else str(job.state)
        error = None
        if state in JOB_FINISHED - {"JOB_STATE_SUCCEEDED"}:
            error = f"batch {job_id} {state}" + (f": {job.error.message}" if job.error and job.error.message else "")
        return BatchStatus(done=state in JOB_FINISHED, state=state, error=error)

    async def batch_results(self, job_id: str) -> dict[str, ChatResult | ProviderError]:
        job = await self._job(job_id)
        if job.dest is None or job.dest.inlined_responses is None:
            return {}
        out: dict[str, ChatResult | ProviderError] = {}
        for item in job.dest.inlined_responses:
            cid = (item.metadata or {}).get("key")
            if cid is None:
                continue
            if item.error is not None or item.response is None:
                msg = item.error.message if item.error else "no response"
                out[cid] = self.error(f"batch item failed: {msg}", status=item.error.code if item.error else None)
            else:
                out[cid] = self.parse(item.response)
        return out
