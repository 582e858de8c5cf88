"""The provider interface: every call the pipeline makes to a service LLM goes through one of these.

A provider only translates: our ChatRequest into the vendor's request, the vendor's answer into a ChatResult,
and the vendor's failures into a ProviderError that says whether a retry can help. Retries, pacing, the
cache and the Batch API driver live in the shared call engine (llamaduo.providers.engine), so every provider behaves alike.
"""

from __future__ import annotations

import abc
import email.utils
import json
import math
import os
import re
import time
import urllib.parse
from dataclasses import asdict, dataclass, field

from llamaduo.errors import ProviderError  # noqa: F401  (part of the provider interface)

# statuses where the same request can succeed later (the vendors' own SDKs retry exactly these)
RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


def retry_after_seconds(headers) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, `Retry-After` as seconds or an HTTP date).

    None when there is no usable value: `inf`, NaN and negative numbers are not a wait anyone meant (the
    engine also caps what it obeys: `limits.backoff_delay`)."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return _sane(float(ms) / 1000)
        value = headers.get("retry-after")
    except (AttributeError, ValueError, TypeError):
        return None
    if value is None:
        return None
    try:
        return _sane(float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return max(0.0, when.timestamp() - time.time())


def _sane(seconds: float) -> float | None:
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


# query parameter names whose values are credentials (Azure's `api-key`, `key=` of Google APIs, SAS `sig`, tokens)
_SECRET_PARAM = re.compile(r"key|token|secret|passw|pwd|sig|auth|credential", re.IGNORECASE)


# `${VAR}` in a base_url: where a gateway wants a credential inside its URL, params name the variable that holds it
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def env_refs(url: str | None) -> list[str]:
    """The environment variables `url` refers to as `${VAR}`."""
    return _ENV_REF.findall(url or "")


def expand_url(url: str | None, *, missing=None) -> str | None:
    """`url` with each `${VAR}` replaced by that variable's value. params.yaml is committed every cycle and its
    provider sections land in dvc.lock and MLflow, so a credential a URL must carry is written there as `${VAR}` and
    only the request (never an identity, a row or a log: see mask_url) sees the value. `missing(name)` is called for an
    unset variable (default: left as written)."""
    if not url:
        return url

    def value(m: re.Match) -> str:
        got = os.environ.get(m.group(1))
        if got is None:
            if missing is not None:
                missing(m.group(1))
            return m.group(0)
        return got

    return _ENV_REF.sub(value, url)


def literal_credentials(url: str | None) -> list[str]:
    """The credentials written out in `url` rather than as `${VAR}`: its password (or, alone, a user name, which may
    be a token) and secret-looking query values. params must hold none (ProviderParams refuses them)."""
    try:
        parts = urllib.parse.urlsplit(url or "")
    except ValueError:
        return []
    found = [parts.password] if parts.password else [parts.username] if parts.username else []
    found += [v for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if v and _SECRET_PARAM.search(k)]
    return [v for v in found if not _ENV_REF.fullmatch(v)]


def url_secrets(url: str | None) -> list[str]:
    """The credentials written into `url`: its userinfo (user and password) and secret-looking query values."""
    if not url:
        return []
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # not a URL the SDKs could use either; nothing to find
        return []
    found = [v for v in (parts.username, parts.password) if v]
    found += [v for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if v and _SECRET_PARAM.search(k)]
    return found


def mask_url(url: str | None) -> str | None:
    """`url` fit to print, log or key a cache on: userinfo and secret-looking query values become `***`.
    Requests still go to the real URL; this is only what a URL may say about itself anywhere else."""
    if not url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # unparseable: say nothing of it rather than risk a key
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = urllib.parse.urlencode([(k, "***" if v and _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@dataclass(frozen=True)
class ChatRequest:
    """One chat call. `n` samples share the input (paid once where the provider supports it)."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    temperature: float
    max_tokens: int
    n: int = 1
    json_schema: dict | None = None  # structured output: the answer must match this JSON schema
    schema_name: str = "answer"

    def key_material(self) -> str:
        """Canonical JSON of everything that determines the answer (for the call cache)."""
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)

    def estimated_tokens(self) -> int:
        """Upper-bound-ish token count for tokens-per-minute pacing (about 4 characters a token)."""
        chars = sum(len(c) for _, c in self.messages)
        return chars // 4 + 1 + self.max_tokens * self.n


@dataclass
class Choice:
    text: str
    finish_reason: str | None  # "stop", "length" (truncated at max_tokens), "refusal", "content_filter", ...
    refusal: str | None = None  # the model's refusal message, when it declined (text is then "")


@dataclass
class ChatResult:
    choices: list[Choice]
    input_tokens: int = 0
    output_tokens: int = 0
    cached: bool = False
    extra: dict = field(default_factory=dict)  # not stored: per-run facts (e.g. {"batch": True})
    # the model the service says answered: often a dated snapshot behind the alias in params ("" if it names none)
    model: str = ""
    # set when the call failed for good with an error no retry can fix (e.g. a 400: prompt too long): the
    # choices are then placeholders (finish_reason "error"). Never stored: a rerun asks again.
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps({"choices": [asdict(c) for c in self.choices], "input_tokens": self.input_tokens,
                           "output_tokens": self.output_tokens, "model": self.model})

    @classmethod
    def from_json(cls, s: str) -> ChatResult:
        d = json.loads(s)
        return cls([Choice(**c) for c in d["choices"]], d["input_tokens"], d["output_tokens"], cached=True,
                   model=d.get("model", ""))


@dataclass
class BatchStatus:
    done: bool             # finished (successfully or not): results, if any, can be collected
    state: str             # the vendor's own word for it, for messages
    error: str | None = None  # why the whole job failed (expired, cancelled, rejected input)


class Provider(abc.ABC):
    """A service LLM. Use as a context manager: `__enter__` acquires what it needs (a server, a client)."""

    #: environment variables tried for the API key when `api_key_env` is null (none: no key needed)
    default_key_env: tuple[str, ...] = ()
    #: whether one call can return n samples (`native_n: null` in params means this)
    supports_n: bool = True

    def __init__(self, name: str, params):
        self.name = name
        self.params = params

    @property
    def model(self) -> str:
        return self.params.model

    def identity(self) -> str:
        """What the call cache keys on besides the request: kind and model (and, for local weights, their content)."""
        return f"{self.params.kind}:{self.params.model}"

    def request_url(self) -> str | None:
        """`base_url` as requests use it: `${VAR}` filled from the environment (an unset one is a fatal error)."""
        def missing(var: str):
            raise ProviderError(f"provider `{self.name}`: `providers.{self.name}.base_url` refers to ${{{var}}}, which is not set "
                                "in the environment", fatal=True)

        return expand_url(self.params.base_url, missing=missing)

    @property
    def native_n(self) -> bool:
        return self.supports_n if self.params.native_n is None else self.params.native_n

    # -- the API key: read from the environment only, at the moment a client is built, and never kept in text

    def api_key(self) -> str | None:
        names = (self.params.api_key_env,) if self.params.api_key_env else self.default_key_env
        for env in names:
            key = os.environ.get(env)
            if key:
                return key
        if names:
            raise ProviderError(f"provider `{self.name}` (model {self.model}): no API key: set the environment variable "
                                f"{' or '.join(names)}" + (" (named by `api_key_env`)" if self.params.api_key_env else ""),
                                fatal=True)
        return None

    def redact(self, text: str) -> str:
        """`text` with any API key this provider could use, and any credential in its `base_url`, blanked (SDK
        messages can echo request details and URLs)."""
        names = (self.params.api_key_env,) if self.params.api_key_env else self.default_key_env
        secrets = [os.environ.get(env) for env in names] + url_secrets(expand_url(self.params.base_url))
        for key in secrets:
            if key and len(key) >= 4:
                text = text.replace(key, "***")
        return text

    def error(self, cause: str, *, status: int | None = None, headers=None, retryable: bool | None = None) -> ProviderError:
        """A ProviderError naming provider, model and cause; retryable and fatal follow the HTTP status."""
        if retryable is None:
            retryable = status is None or status in RETRYABLE_STATUS
        # no request can get past these (key, access, unknown model or path, method not served): the stage stops
        fatal = status in (401, 403, 404, 405)
        where = f"provider `{self.name}` (model {self.model})"
        prefix = f"HTTP {status}: " if status is not None else ""
        return ProviderError(self.redact(f"{where}: {prefix}{cause}"), status=status, retryable=retryable,
                             retry_after=retry_after_seconds(headers), fatal=fatal)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    async def aclose(self) -> None:  # noqa: B027 (an optional hook: nothing to release by default)
        """Release what belongs to one event loop (HTTP clients); the call engine calls it after each run."""

    async def ensure_ready(self) -> None:  # noqa: B027 (an optional hook: nothing to start by default)
        """Acquire what calls need (e.g. start a local server); the engine calls it only when the cache misses."""

    @abc.abstractmethod
    async def chat(self, request: ChatRequest) -> ChatResult:
        """Send one request; raise ProviderError (see `error`) when it fails."""

    # -- the Batch API (hosted kinds): submit, poll, collect. The engine persists ids and drives the loop.

    async def batch_submit(self, items: list[tuple[str, ChatRequest]], tag: str = "") -> str:
        """Submit (custom_id, request) pairs as one job; return the vendor's job id. `tag` is the submission's
        idempotency tag: the job should carry it where the vendor keeps client data, for `batch_find`."""
        raise ProviderError(f"provider `{self.name}`: kind `{self.params.kind}` has no Batch API")

    async def batch_find(self, tag: str, custom_ids: list[str], since: float) -> str | None:
        """The id of a job submitted (at or after unix time `since`) with `tag` and these custom ids, or None if
        the vendor holds none: asked before submitting again after a timeout, a 5xx or a kill, so that a job the
        vendor created although we never heard back is not paid twice. Kinds that cannot tell return None."""
        return None

    async def batch_status(self, job_id: str) -> BatchStatus:
        raise ProviderError(f"provider `{self.name}`: kind `{self.params.kind}` has no Batch API")

    async def batch_results(self, job_id: str) -> dict[str, ChatResult | ProviderError]:
        """Per custom_id: its answer, or why that one request failed."""
        raise ProviderError(f"provider `{self.name}`: kind `{self.params.kind}` has no Batch API")
