"""Loopback Vertex AI endpoints, with the Google credential chain exercised for real:

- FakeVertexGemini: google-genai's Vertex layout, POST /{v1beta1|v1}/projects/{p}/locations/{l}/publishers/google/
  models/{m}:generateContent;
- FakeVertexClaude: the anthropic SDK's Vertex layout, POST /v1/projects/{p}/locations/{l}/publishers/anthropic/
  models/{m}:rawPredict, the Messages body without `model`, with `anthropic_version`.

Both also serve an OAuth token endpoint (POST /token). `key_file` writes a service account key (a fresh RSA key,
the file `gcloud iam service-accounts keys create` gives) whose token_uri is that endpoint: point
GOOGLE_APPLICATION_CREDENTIALS at it and google-auth, inside the SDKs, signs a JWT with the key and trades it for
an access token there; the fake checks the JWT's signature with the public key. Every model call must carry a
token this fake issued (else 401, as on Google Cloud).
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt

from fakes.anthropic_server import FakeAnthropic
from fakes.gemini_server import FakeGemini


class _GoogleAuth:
    """The token endpoint and the bearer check shared by both fakes."""

    def _auth_init(self, project: str, location: str):
        self.project, self.location = project, location
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()).decode()
        self._public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        self.client_email = f"llamaduo@{project}.iam.gserviceaccount.com"
        self.token_prefix = "ya29.fake-access-token"  # what issued access tokens start with (a test may mark them)
        self.issued: list[str] = []
        self.paths: list[str] = []
        self.unauthorized = 0

    def key_file(self, folder: Path, private_key_id: str = "fake-key-id") -> Path:
        f = Path(folder) / "service-account.json"
        f.write_text(json.dumps({"type": "service_account", "project_id": self.project, "private_key_id": private_key_id,
                                 "private_key": self._private_pem, "client_email": self.client_email,
                                 "client_id": "1234567890", "token_uri": f"{self.root}/token"}))
        return f

    def token(self, body):
        form = dict(urllib.parse.parse_qsl(body.decode() if isinstance(body, bytes) else ""))
        try:
            # google-auth addresses the JWT to Google's token endpoint wherever it posts it, as Google expects
            claims = jwt.decode(form.get("assertion", ""), certs=self._public_pem, audience="https://oauth2.googleapis.com/token")
        except ValueError as exc:
            return 400, {"error": "invalid_grant", "error_description": str(exc)}, {}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or claims.get("iss") != self.client_email:
            return 400, {"error": "invalid_grant", "error_description": "Bad Request"}, {}
        with self.lock:
            tok = f"{self.token_prefix}-{len(self.issued)}"
            self.issued.append(tok)
        return 200, {"access_token": tok, "expires_in": 3600, "token_type": "Bearer",
                     "scope": "https://www.googleapis.com/auth/cloud-platform"}, {}

    def authorized(self) -> bool:
        last = {k.lower(): v for k, v in self.seen_headers[-1].items()}
        ok = last.get("authorization", "").removeprefix("Bearer ") in self.issued
        if not ok:
            with self.lock:
                self.unauthorized += 1
        return ok

    def model_path(self, path: str, publisher: str) -> tuple[str, str] | None:
        """(model, action) of a path under this project and location, else None."""
        prefix = f"/projects/{self.project}/locations/{self.location}/publishers/{publisher}/models/"
        rest = path.split("/", 2)[2] if path.count("/") >= 2 else ""
        if not ("/" + rest).startswith(prefix):
            return None
        model, _, action = ("/" + rest)[len(prefix):].partition(":")
        return urllib.parse.unquote(model), action


class FakeVertexGemini(_GoogleAuth, FakeGemini):
    def __init__(self, *args, project: str = "fake-project", location: str = "europe-west4", **kwargs):
        super().__init__(*args, **kwargs)
        self._auth_init(project, location)

    @property
    def base_url(self) -> str:
        return self.root  # google-genai adds /v1beta1/projects/...

    def route(self, method, path, body):
        with self.lock:
            self.paths.append(f"{method} {path}")
        if method == "POST" and path == "/token":
            return self.token(body)
        target = self.model_path(path, "google")
        if target is None:
            return 404, self.error_body(404), {}
        if not self.authorized():
            return 401, self.error_body(401), {}
        return super().route(method, path, body)


class FakeVertexClaude(_GoogleAuth, FakeAnthropic):
    def __init__(self, *args, project: str = "fake-project", location: str = "us-east5", **kwargs):
        super().__init__(*args, **kwargs)
        self._auth_init(project, location)
        self.sent: list[dict] = []  # the bodies as sent (the model is in the path, not here)

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"  # the SDK's default is https://{region}-aiplatform.googleapis.com/v1

    def route(self, method, path, body):
        with self.lock:
            self.paths.append(f"{method} {path}")
        if method == "POST" and path == "/token":
            return self.token(body)
        target = self.model_path(path, "anthropic")
        if method != "POST" or not path.startswith("/v1/") or target is None or target[1] != "rawPredict":
            return 404, self.error_body(404), {}
        if not self.authorized():
            return 401, self.error_body(401), {}
        with self.lock:
            self.sent.append(json.loads(json.dumps(body)))
        return self.generate(None, dict(body, model=target[0]))
