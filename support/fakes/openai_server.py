"""A loopback server that speaks the OpenAI wire format: Chat Completions, files and batches."""

from __future__ import annotations

import json

from fakes.server import FakeServer


class FakeOpenAI(FakeServer):
    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def error_body(self, code: int) -> dict:
        return {"error": {"message": f"injected {code}", "type": "x", "code": str(code)}}

    def usage_of(self, payload: dict) -> tuple[int, int]:
        u = payload.get("usage") or {}
        return u.get("prompt_tokens", 0), u.get("completion_tokens", 0)

    def respond(self, body: dict, index: int, mode: str | None) -> dict:
        n = body.get("n", 1)
        choices = []
        for k in range(n):
            msg = {"role": "assistant", "content": self.answer(body, k), "refusal": None}
            finish = "stop"
            if mode == "refusal":
                msg.update(content=None, refusal="I can't help with that.")
            elif mode == "empty":
                msg["content"] = ""
            elif mode == "truncated":
                msg["content"] = msg["content"][: len(msg["content"]) // 2]
                finish = "length"
            choices.append({"index": k, "finish_reason": finish, "message": msg})
        # like the real API, an alias is answered by a dated snapshot
        return {"id": f"c{index}", "object": "chat.completion", "created": 0, "model": f"{body['model']}-2026-01-15",
                "choices": choices,
                "usage": {"prompt_tokens": 10, "completion_tokens": 5 * n, "total_tokens": 10 + 5 * n}}

    def route(self, method, path, body):
        self.hits[f"{method} {path.split('/')[2] if path.count('/') > 1 else path}"] += 1
        if method == "POST" and path == "/v1/chat/completions":
            return self.generate(None, body)
        if method == "POST" and path == "/v1/files":
            # multipart upload: the JSONL lines are the part's content
            lines = [json.loads(s) for s in body.decode().splitlines() if s.startswith('{"custom_id"')]
            with self.lock:  # a sequence number: uploads in flight at once get ids of their own
                self._file_seq = getattr(self, "_file_seq", 0) + 1
                fid = f"file-{self._file_seq}-{len(lines)}"
                self._uploads = getattr(self, "_uploads", {}) | {fid: lines}
            return 200, {"id": fid, "object": "file", "bytes": len(body), "created_at": 0,
                         "filename": "batch.jsonl", "purpose": "batch", "status": "processed"}, {}
        if method == "POST" and path == "/v1/batches":
            items = [(line["custom_id"], line["body"]) for line in self._uploads[body["input_file_id"]]]
            job_id = self.new_batch("batch_", items, meta=body.get("metadata"))
            fault = self.batch_create_fault()
            if fault is not None:
                return None if fault == "drop" else fault
            return 200, self._batch(job_id, "validating", body["input_file_id"]), {}
        if method == "GET" and path == "/v1/batches":  # newest first, like the real list
            with self.lock:
                ids = sorted(self.batches, key=lambda j: -self.batches[j]["created"])
            data = [self._batch(j, "in_progress", "f") for j in ids]
            return 200, {"object": "list", "data": data, "first_id": ids[0] if ids else None,
                         "last_id": ids[-1] if ids else None, "has_more": False}, {}
        if method == "GET" and path.startswith("/v1/batches/"):
            job_id = path.rsplit("/", 1)[1]
            if not self.known_batch(job_id):
                return 404, self.error_body(404), {}
            done = self.poll_batch(job_id)
            return 200, self._batch(job_id, "completed" if done else "in_progress", "f", f"out-{job_id}" if done else None), {}
        if method == "GET" and path.startswith("/v1/files/out-") and path.endswith("/content"):
            job_id = path.split("/")[3][len("out-"):]
            lines = [json.dumps({"id": f"r{i}", "custom_id": cid, "error": None,
                                 "response": {"status_code": 200, "request_id": f"q{i}", "body": resp}})
                     for i, (cid, resp) in enumerate(self.batch_answers(job_id))]
            return 200, "\n".join(lines).encode(), {"Content-Type": "application/octet-stream"}
        return 404, self.error_body(404), {}

    def _batch(self, job_id, status, input_file_id, output_file_id=None):
        job = self.batches.get(job_id) or {}
        return {"id": job_id, "object": "batch", "endpoint": "/v1/chat/completions", "input_file_id": input_file_id,
                "completion_window": "24h", "status": status, "created_at": int(job.get("created", 0)),
                "output_file_id": output_file_id, "error_file_id": None, "errors": None, "metadata": job.get("meta") or None}
