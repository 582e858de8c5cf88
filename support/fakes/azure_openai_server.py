"""A loopback Azure OpenAI resource on its v1 endpoint: OpenAI's wire format under /openai/v1/, the deployment
name in `model`, the key in the `api-key` header, and the Batch API with Azure's endpoint name
(`/chat/completions`, relative to /openai/v1/) in the batch lines and the job."""

from __future__ import annotations

from fakes.openai_server import FakeOpenAI

AZURE_BATCH_ENDPOINT = "/chat/completions"


class FakeAzureOpenAI(FakeOpenAI):
    def __init__(self, *args, deployments: tuple[str, ...] = ("gpt-4o-deploy",), **kwargs):
        super().__init__(*args, **kwargs)
        self.deployments = deployments  # what the resource has deployed: another name is a 404, as on Azure
        self.paths: list[str] = []

    @property
    def base_url(self) -> str:
        return f"{self.root}/openai/v1/"

    def error_body(self, code: int) -> dict:
        return {"error": {"code": {404: "DeploymentNotFound", 401: "401"}.get(code, str(code)), "message": f"injected {code}"}}

    def route(self, method, path, body):
        with self.lock:
            self.paths.append(f"{method} {path}")
        if not path.startswith("/openai/v1/"):
            return 404, self.error_body(404), {}
        path = path[len("/openai"):]  # the rest is OpenAI's own layout
        if method == "POST" and path == "/v1/chat/completions" and body.get("model") not in self.deployments:
            return 404, self.error_body(404), {}
        if method == "POST" and path == "/v1/batches":
            lines = self._uploads.get(body["input_file_id"], [])
            if body.get("endpoint") != AZURE_BATCH_ENDPOINT or any(line["url"] != AZURE_BATCH_ENDPOINT for line in lines):
                return 400, {"error": {"code": "invalid_request", "message": f"endpoint must be {AZURE_BATCH_ENDPOINT}"}}, {}
        return super().route(method, path, body)
