"""A loopback server that speaks the Anthropic wire format: Messages (with tools) and Message Batches."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from fakes.server import FakeServer

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               429: "rate_limit_error", 529: "overloaded_error"}


class FakeAnthropic(FakeServer):
    @property
    def base_url(self) -> str:
        return self.root  # the SDK adds /v1/...

    def error_body(self, code: int) -> dict:
        return {"type": "error", "error": {"type": ERROR_TYPES.get(code, "api_error"), "message": f"injected {code}"}}

    def usage_of(self, payload: dict) -> tuple[int, int]:
        u = payload.get("usage") or {}
        return u.get("input_tokens", 0), u.get("output_tokens", 0)

    def respond(self, body: dict, index: int, mode: str | None) -> dict:
        text = self.answer(body, 0)
        tool = (body.get("tool_choice") or {}).get("name")
        stop = "tool_use" if tool else "end_turn"
        content = [{"type": "text", "text": text}]
        if mode == "refusal":
            content, stop = [{"type": "text", "text": "I can't help with that."}], "refusal"
        elif mode == "empty":
            content, stop = [], "end_turn"
        elif mode == "truncated":
            content, stop = [{"type": "text", "text": text[: len(text) // 2]}], "max_tokens"
        elif tool:
            try:
                content = [{"type": "tool_use", "id": f"toolu_{index}", "name": tool, "input": json.loads(text)}]
            except json.JSONDecodeError:  # a model that ignores the tool: plain text
                stop = "end_turn"
        return {"id": f"msg_{index}", "type": "message", "role": "assistant", "model": f"{body['model']}-20260115", "content": content,
                "stop_reason": stop, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 5}}

    def route(self, method, path, body):
        self.hits[f"{method} {path}".split("/msgbatch")[0]] += 1
        if method == "POST" and path == "/v1/messages":
            return self.generate(None, body)
        if method == "POST" and path == "/v1/messages/batches":
            job_id = self.new_batch("msgbatch_", [(r["custom_id"], r["params"]) for r in body["requests"]])
            fault = self.batch_create_fault()
            if fault is not None:
                return None if fault == "drop" else fault
            return 200, self._batch(job_id, "in_progress"), {}
        if method == "GET" and path == "/v1/messages/batches":  # newest first, like the real list
            with self.lock:
                ids = sorted(self.batches, key=lambda j: -self.batches[j]["created"])
            data = [self._batch(j, "ended" if self.batches[j]["polls"] > self.batch_polls else "in_progress") for j in ids]
            return 200, {"data": data, "has_more": False, "first_id": ids[0] if ids else None,
                         "last_id": ids[-1] if ids else None}, {}
        if method == "GET" and path.startswith("/v1/messages/batches/") and not self.known_batch(path.split("/")[4]):
            return 404, self.error_body(404), {}
        if method == "GET" and path.startswith("/v1/messages/batches/") and path.endswith("/results"):
            job_id = path.split("/")[4]
            lines = [json.dumps({"custom_id": cid, "result": {"type": "succeeded", "message": msg}})
                     for cid, msg in self.batch_answers(job_id)]
            return 200, "\n".join(lines).encode(), {"Content-Type": "application/binary"}
        if method == "GET" and path.startswith("/v1/messages/batches/"):
            job_id = path.rsplit("/", 1)[1]
            return 200, self._batch(job_id, "ended" if self.poll_batch(job_id) else "in_progress"), {}
        return 404, self.error_body(404), {}

    def _batch(self, job_id, status):
        n = len(self.batches[job_id]["items"])
        done = status == "ended"
        return {"id": job_id, "type": "message_batch", "processing_status": status,
                "request_counts": {"processing": 0 if done else n, "succeeded": n if done else 0, "errored": 0,
                                   "canceled": 0, "expired": 0},
                "created_at": datetime.fromtimestamp(self.batches[job_id]["created"], UTC).isoformat(),
                "expires_at": "2099-01-02T00:00:00Z",
                "ended_at": "2025-01-01T01:00:00Z" if done else None, "cancel_initiated_at": None, "archived_at": None,
                "results_url": f"{self.root}/v1/messages/batches/{job_id}/results" if done else None}
