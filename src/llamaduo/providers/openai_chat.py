"""OpenAI itself: Chat Completions with structured outputs and `n`, and the Batch API (files + batches)."""

from __future__ import annotations

import json

import openai
from openai.types.chat import ChatCompletion

from llamaduo.providers.base import BatchStatus, ChatRequest, ChatResult, ProviderError
from llamaduo.providers.openai_compatible import OpenAICompatibleProvider

ENDPOINT = "/v1/chat/completions"
FINISHED = {"completed", "failed", "expired", "cancelled"}


class OpenAIProvider(OpenAICompatibleProvider):
    default_key_env = ("OPENAI_API_KEY",)

    def identity(self) -> str:
        return f"openai:{self.params.model}"  # base_url only moves the endpoint (a proxy, a test server)

    def api_key(self) -> str:
        return super(OpenAICompatibleProvider, self).api_key()

    def body(self, request: ChatRequest) -> dict:
        body = super().body(request)
        # current OpenAI models take max_completion_tokens; reasoning models reject max_tokens
        body["max_completion_tokens"] = body.pop("max_tokens")
        return body

    async def batch_submit(self, items: list[tuple[str, ChatRequest]]) -> str:
        lines = [json.dumps({"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": self.body(req)})
                 for cid, req in items]
        try:
            f = await self.client().files.create(file=("llamaduo-batch.jsonl", "\n".join(lines).encode()), purpose="batch")
            job = await self.client().batches.create(input_file_id=f.id, endpoint=ENDPOINT, completion_window="24h")
        except openai.OpenAIError as exc:
            raise self.translate(exc) from None
        return job.id

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
