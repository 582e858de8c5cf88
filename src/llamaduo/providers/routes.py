"""Where a hosted kind is reached (`providers.<name>.cloud`): the vendor's own API, a gateway at `base_url`,
or a cloud (Azure OpenAI, Vertex AI, Bedrock). What the three SDK-backed providers share about routes:

- the cache identity of a cloud route (the cloud serves its own copy of a model under its own names);
- the environment variables that hold a cloud's secrets, so that error messages can blank them (a gateway
  or SDK message can quote a request's headers back);
- the message of a 404/405 on the request path: the first thing a user pointing `base_url` at a gateway
  meets, and nothing past it can succeed, so it is fatal and names `base_url` and `api_version`.

Credentials are never params: each cloud's SDK reads its usual environment or credential chain itself.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

from llamaduo.errors import ProviderError
from llamaduo.urls import mask_url

# secrets each cloud's credential chain reads from the environment (the SDKs read them; we only blank them)
CLOUD_SECRET_ENVS: dict[str | None, tuple[str, ...]] = {
    None: (),
    "azure": ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_AD_TOKEN"),
    "vertex": (),  # Google credentials live in files (GOOGLE_APPLICATION_CREDENTIALS); tokens are blanked below
    "bedrock": ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK"),
}
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_SIGV4 = re.compile(r"(Signature=)[0-9a-f]{16,}")


def shown_url(url: str | None) -> str:
    """`url` fit for a message: credentials masked (urls.mask_url), null said in words."""
    return mask_url(url) if url else "null (the SDK's default endpoint)"


def cloud_identity(params) -> str | None:
    """The cache identity of a cloud route, or None for the vendor's own API (whose identity stays kind:model)."""
    cloud = params.cloud
    if cloud is None:
        return None
    if cloud == "azure":
        # a deployment name means something only inside its resource (the host of base_url)
        host = urlsplit(params.base_url or "").hostname or ""
        return f"{params.kind}:azure:{host}:{params.model}"
    return f"{params.kind}:{cloud}:{params.model}"


def redact_cloud(params, text: str) -> str:
    """`text` with the cloud's secrets from the environment and any bearer token or SigV4 signature blanked."""
    for env in CLOUD_SECRET_ENVS.get(params.cloud, ()):
        value = os.environ.get(env)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    if params.cloud in ("vertex", "bedrock", "azure"):
        text = _BEARER.sub(r"\1***", text)
        text = _SIGV4.sub(r"\1***", text)
    return text


class CloudRoute:
    """Mixed into a hosted kind's provider: a cloud route (`cloud:`) is its own cache identity, and the cloud's
    secrets are blanked in every message, beside what the provider itself blanks."""

    def identity(self) -> str:
        return cloud_identity(self.params) or super().identity()

    def redact(self, text: str) -> str:
        return redact_cloud(self.params, super().redact(text))


def request_path(exc) -> str | None:
    """The path an SDK exception's HTTP response answered (httpx or aiohttp), when it carries one."""
    resp = getattr(exc, "response", None)
    for get in (lambda r: r.request.url, lambda r: r.url):
        try:
            url = get(resp)
        except Exception:  # noqa: BLE001 (a response without a request, an aiohttp response: try the next shape)
            continue
        if url is not None:
            return urlsplit(str(url)).path or None
    return None


def wrong_path(provider, err: ProviderError, exc=None, *, api_version: str | None | bool = False) -> ProviderError:
    """`err` unchanged, unless the server answered 404/405: then a fatal error naming base_url (and api_version,
    for kinds that have one) - a gateway that serves another path or version answers every call the same way.

    api_version=False: the kind has no API version in its path."""
    if err.status not in (404, 405):
        return err
    p = provider.params
    where = f"`providers.{provider.name}.base_url` {shown_url(p.base_url)}"
    if p.cloud:
        where += f" (cloud {p.cloud})"
    if api_version is not False:
        where += f", `api_version` {api_version or 'null (the SDK default)'}"
    path = request_path(exc) if exc is not None else None
    hint = ("the server does not serve this path or method: check base_url and api_version (a gateway often serves "
            "one API version only)" if api_version is not False else
            "the server does not serve this path or method, or has no such model: check base_url and model")
    msg = f"{err}; sent to {where}" + (f", path {path}" if path else "") + f": {hint}"
    return ProviderError(provider.redact(msg), status=err.status, retryable=False, fatal=True)
