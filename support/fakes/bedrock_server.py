"""A loopback Amazon Bedrock runtime for Claude: POST /model/{model}/invoke with the Messages body minus `model`
plus `anthropic_version`, every request signed with AWS Signature V4 - which this fake verifies against the
credentials it was given (a request signed with another secret, or not at all, gets 403 as on AWS)."""

from __future__ import annotations

import io
import json
import threading
import urllib.parse

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from fakes.anthropic_server import FakeAnthropic


class FakeBedrock(FakeAnthropic):
    def __init__(self, *args, access_key: str, secret_key: str, session_token: str | None = None, region: str = "us-east-1",
                 **kwargs):
        self._local = threading.local()  # the raw request of the handler thread, for the signature check
        super().__init__(*args, **kwargs)
        self.credentials = Credentials(access_key, secret_key, session_token)
        self.region = region
        self.paths: list[str] = []
        self.sent: list[dict] = []  # the bodies as sent (the model is in the path, not here)
        self.bad_signatures = 0

    @property
    def base_url(self) -> str:
        return self.root  # the SDK adds /model/{model}/invoke

    def error_body(self, code: int) -> dict:
        return {"message": f"injected {code}"}

    def _handler(self):
        base, fake = super()._handler(), self

        class Handler(base):
            def _serve(self, method):
                # keep the exact bytes and headers the signature covers, then let the shared handler read them
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake._local.raw, fake._local.headers = raw, {k.lower(): v for k, v in self.headers.items()}
                self.rfile = io.BytesIO(raw)
                super()._serve(method)

        return Handler

    def signature_ok(self, method: str, path: str) -> bool:
        raw, headers = self._local.raw, self._local.headers
        auth = headers.get("authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return False
        fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(","))
        akid, date, region, service, _ = fields["Credential"].split("/")
        if (akid, region, service) != (self.credentials.access_key, self.region, "bedrock"):
            return False
        if self.credentials.token and headers.get("x-amz-security-token") != self.credentials.token:
            return False
        signed = fields["SignedHeaders"].split(";")
        request = AWSRequest(method=method, url=f"{self.root}{path}", data=raw,
                             headers={h: headers[h] for h in signed if h in headers})
        request.context["timestamp"] = headers["x-amz-date"]
        signer = SigV4Auth(self.credentials, "bedrock", self.region)
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        return expected == fields["Signature"]

    def route(self, method, path, body):
        with self.lock:
            self.paths.append(f"{method} {path}")
        parts = path.split("/")
        if not (method == "POST" and len(parts) == 4 and parts[1] == "model" and parts[3] == "invoke"):
            return 404, {"message": f"Unknown operation {method} {path}"}, {}
        if not self.signature_ok(method, path):
            with self.lock:
                self.bad_signatures += 1
            return 403, {"message": "The request signature we calculated does not match the signature you provided."}, {}
        with self.lock:
            self.sent.append(json.loads(json.dumps(body)))
        # the served model, as Bedrock reports it in the body, comes from the path
        return self.generate(None, dict(body, model=urllib.parse.unquote(parts[2])))
