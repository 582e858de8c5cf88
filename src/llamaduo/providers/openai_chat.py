"""OpenAI itself: Chat Completions with structured outputs and `n`, and the Batch API (files + batches).

Routes: OpenAI's API (or a gateway at `base_url`), and Azure OpenAI's v1 endpoint (`cloud: azure`,
`base_url` https://<resource>.openai.azure.com/openai/v1/, `model` = the deployment name). The v1 endpoint
speaks OpenAI's own API under /openai/v1/, so the plain OpenAI client does (the AzureOpenAI client rewrites
paths for the older /deployments/{name}/...?api-version= layout); only the key header and the batch
endpoint name differ.
"""

from __future__ import annotations

import json

import openai
from openai.types.chat import ChatCompletion

from llamaduo.providers.base import BatchStatus, ChatRequest, ChatResult, ProviderError
from llamaduo.providers.openai_compatible import OpenAICompatibleProvider
from llamaduo.providers.routes import CloudRoute, cloud_identity, wrong_path

ENDPOINT = "/v1/chat/completions"
# Azure's batch lines and jobs name the route under its /openai/v1/ base
AZURE_ENDPOINT = "/chat/completions"
FINISHED = {"completed", "failed", "expired", "cancelled"}
TAG_KEY = "llamaduo_tag"  # the batch metadata entry that holds a submission's idempotency tag


class OpenAIProvider(CloudRoute, OpenAICompatibleProvider):
    default_key_env = ("OPENAI_API_KEY",)

    def __init__(self, name: str, params, base_url: str | None = None):
        super().__init__(name, params, base_url)
        if params.cloud == "azure":
            self.default_key_env = ("AZURE_OPENAI_API_KEY",)  # the Azure SDKs' own variable; `api_key_env` overrides

    def identity(self) -> str:
        # base_url only moves the endpoint (a proxy, a test server); on Azure it names the resource the deployment is in
        return cloud_identity(self.params) or f"openai:{self.params.model}"

    def api_key(self) -> str:
        return super(OpenAICompatibleProvider, self).api_key()

    def client(self) -> openai.AsyncOpenAI:
        if self._client is None and self.params.cloud == "azure":
            key = self.api_key()
            # Azure documents the `api-key` header; the OpenAI client also sends the key as a bearer token, which
            # the v1 endpoint accepts as well (both go to the same host only)
            self._client = openai.AsyncOpenAI(base_url=self.base_url, api_key=key, default_headers={"api-key": key},
                                              max_retries=0, timeout=self.params.timeout_s)
        return super().client()

    def translate(self, exc: Exception) -> ProviderError:
        return wrong_path(self, super().translate(exc), exc)

    @property
    def endpoint(self) -> str:
        return AZURE_ENDPOINT if self.params.cloud == "azure" else ENDPOINT

    def body(self, request: ChatRequest) -> dict:
        body = super().body(request)
        # current OpenAI models take max_completion_tokens; reasoning models reject max_tokens
        body["max_completion_tokens"] = body.pop("max_tokens")
        return body

    async def batch_submit(self, items: list[tuple[str, ChatRequest]], tag: str = "") -> str:
        lines = [json.dumps({"custom_id": cid, "method": "POST", "url": self.endpoint, "body": self.body(req)})
                 for cid, req in items]
        try:
            f = await self.client().files.create(file=(f"{tag or 'llamaduo-batch'}.jsonl", "\n".join(lines).encode()),
                                                 purpose="batch")
            # the idempotency tag rides in the batch's metadata, where `batch_find` looks for it
            job = await self.client().batches.create(input_file_id=f.id, endpoint=self.endpoint, completion_window="24h",
                                                     **({"metadata": {TAG_KEY: tag}} if tag else {}))
        except openai.OpenAIError as exc:
            raise self.translate(exc) from None
        return job.id

    async def batch_find(self, tag: str, custom_ids: list[str], since: float) -> str | None:
        try:
            async for job in self.client().batches.list(limit=100):
                if (job.metadata or {}).get(TAG_KEY) == tag:
                    return job.id
                if job.created_at and job.created_at < since:  # listed newest first: older ones cannot be it
                    return None
        except openai.OpenAIError as exc:
            raise self.translate(exc) from None
        return None

    async def batch_status(self, job_id: str) -> BatchStatus:
        try:
            job = await self.client().batches.retrieve(job_id)
        except openai.OpenAIError as exc:
            raise self.translate(exc) from None
        error = None
        if job.status in {"failed", "expired", "cancelled"}:
            details = "; ".join(e.message or e.code or "" for e in (job.errors.data if job.errors and job.errors.data else []))
            error = f"batch {job_id} {job.status}" + (f": {details}" if details else "")
        return BatchStatus(done=job.status in FINISHED, state=job.status, error=error)

    async def batch_results(self, job_id: str) -> dict[str, ChatResult | ProviderError]:
        try:
            job = await self.client().batches.retrieve(job_id)
            texts = [(await self.client().files.content(fid)).text
                     for fid in (job.output_file_id, job.error_file_id) if fid]
        except openai.OpenAIError as exc:
            raise self.translate(exc) from None
        out: dict[str, ChatResult | ProviderError] = {}
        for text in texts:
            for line in text.splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                resp, err = row.get("response") or {}, row.get("error")
                status = resp.get("status_code")
                if err or status != 200:
                    cause = (err or {}).get("message") or json.dumps(resp.get("body"))[:300]
                    out[row["custom_id"]] = self.error(f"batch item failed: {cause}", status=status)
                    continue
                try:
                    out[row["custom_id"]] = self.parse(ChatCompletion.model_validate(resp["body"]))
                except (KeyError, ValueError) as exc:
                    out[row["custom_id"]] = self.error(f"unreadable batch item ({exc})", retryable=True)
        return out
