"""A loopback server that speaks the Gemini API REST wire format: generateContent and batch mode."""

from __future__ import annotations

from fakes.server import FakeServer

STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
          429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


class FakeGemini(FakeServer):
    def __init__(self, *args, only_version: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # a gateway that serves one API version: any other answers 405, as a v1beta-only gateway does for /v1/
        self.only_version = only_version

    @property
    def base_url(self) -> str:
        return self.root  # the SDK adds /v1beta/models/...

    def error_body(self, code: int) -> dict:
        return {"error": {"code": code, "message": f"injected {code}", "status": STATUS.get(code, "UNKNOWN")}}

    def usage_of(self, payload: dict) -> tuple[int, int]:
        u = payload.get("usageMetadata") or {}
        return u.get("promptTokenCount", 0), u.get("candidatesTokenCount", 0)

    def respond(self, body: dict, index: int, mode: str | None) -> dict:
        n = (body.get("generationConfig") or {}).get("candidateCount", 1)
        usage = {"promptTokenCount": 10, "candidatesTokenCount": 5 * n, "totalTokenCount": 10 + 5 * n}
        if mode == "refusal":  # the prompt itself blocked: no candidates at all
            return {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 10}}
        cands = []
        for k in range(n):
            text, finish = self.answer(body, k), "STOP"
            if mode == "empty":
                text = ""
            elif mode == "truncated":
                text, finish = text[: len(text) // 2], "MAX_TOKENS"
            cands.append({"index": k, "finishReason": finish, "content": {"role": "model", "parts": [{"text": text}]}})
        return {"candidates": cands, "usageMetadata": usage, "modelVersion": "fake-001"}

    def route(self, method, path, body):
        if self.only_version and path.split("/")[1] != self.only_version:
            self.hits[f"{method} {path.split('/')[1]} (not served)"] += 1
            return 405, b"Method Not Allowed", {"Content-Type": "text/plain"}
        path = "/" + path.split("/", 2)[2]  # the SDK picks the API version (v1beta, v1); both mean the same here
        action = path.rsplit(":", 1)[1] if ":" in path else path.split("/")[1]
        self.hits[f"{method} {action}"] += 1
        if method == "POST" and path.endswith(":generateContent"):
            return self.generate(None, body)
        if method == "POST" and path.endswith(":batchGenerateContent"):
            reqs = body["batch"]["inputConfig"]["requests"]["requests"]
            job_id = self.new_batch("batches/b", [(r["metadata"]["key"], r["request"]) for r in reqs],
                                    meta={"displayName": body["batch"].get("displayName")})
            fault = self.batch_create_fault()
            if fault is not None:
                return None if fault == "drop" else fault
            return 200, self._job(job_id, "BATCH_STATE_PENDING"), {}
        if method == "GET" and path == "/batches":  # newest first, like the real list
            with self.lock:
                ids = sorted(self.batches, key=lambda j: -self.batches[j]["created"])
            return 200, {"operations": [self._job(j, "BATCH_STATE_RUNNING") for j in ids]}, {}
        if method == "GET" and path.startswith("/batches/"):
            job_id = path[1:]
            if not self.known_batch(job_id):
                return 404, self.error_body(404), {}
            if not self.poll_batch(job_id):
                return 200, self._job(job_id, "BATCH_STATE_RUNNING"), {}
            out = {"inlinedResponses": {"inlinedResponses": [{"response": r, "metadata": {"key": cid}}
                                                             for cid, r in self.batch_answers(job_id)]}}
            return 200, self._job(job_id, "BATCH_STATE_SUCCEEDED", out), {}
        return 404, self.error_body(404), {}

    def _job(self, job_id, state, output=None):
        meta = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
                "name": job_id, "model": "models/fake", "state": state}
        if (self.batches.get(job_id) or {}).get("meta", {}).get("displayName"):
            meta["displayName"] = self.batches[job_id]["meta"]["displayName"]
        if output:
            meta["output"] = output
        return {"name": job_id, "metadata": meta, "done": output is not None}
