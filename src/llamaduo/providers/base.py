"""The provider interface: every call the pipeline makes to a service LLM goes through one of these.

A provider only translates: our ChatRequest into the vendor's request, the vendor's answer into a ChatResult,
and the vendor's failures into a ProviderError that says whether a retry can help. Retries, pacing, the
cache and the Batch API live in the shared call engine (`engine.py`, `calls.py`, `batch.py`), so every provider behaves alike.
"""

from __future__ import annotations

import abc
import email.utils
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

from llamaduo.errors import ProviderError  # noqa: F401  (part of the provider interface)
from llamaduo.urls import expand_url, url_secrets

# statuses where the same request can succeed later (the vendors' own SDKs retry exactly these)
RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
# the tokens a chat format adds around each message (its role and delimiters) and to open the reply, counted on top
# of the text in `ChatRequest.input_token_bound`: more than the formats add (OpenAI documents 3 a message, 1 for
# the role and 3 to prime the reply)
FORMAT_TOKENS_PER_MESSAGE = 8
FORMAT_TOKENS_PER_REPLY = 8


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

    def estimated_input_tokens(self) -> int:
        """The prompt's tokens, about 4 characters a token (no tokenizer of the vendor's is at hand): a typical
        count, for pacing under `tpm`; `input_token_bound` is the most it can be."""
        return sum(len(c) for _, c in self.messages) // 4 + 1

    def input_token_bound(self) -> int:
        """The most prompt tokens a vendor can bill for this request: one per UTF-8 byte of each message and of the
        JSON schema (the vendor adds the schema to the prompt), plus the chat format's tokens per message and for the
        reply. A byte-level BPE (OpenAI's, Anthropic's, Llama's) or a SentencePiece with byte fallback (Gemini's) never
        makes more than one token of a byte, so this holds for any text, where 4 characters a token undercounts code,
        digits and most scripts other than Latin. It is about 4 times the count for English prose: the spending cap
        reserves it before a call, so a stage stops at the cap or a call short of it, never past it. The vendor's own
        tokenizer would count exactly; tiktoken (OpenAI's) fetches its encodings over the network on first use, and
        the cap must hold offline."""
        text = sum(len(c.encode("utf-8", "surrogatepass")) for _, c in self.messages)
        schema = len(json.dumps(self.json_schema, ensure_ascii=False).encode("utf-8")) if self.json_schema else 0
        return text + schema + FORMAT_TOKENS_PER_MESSAGE * len(self.messages) + FORMAT_TOKENS_PER_REPLY

    def estimated_tokens(self) -> int:
        """Upper-bound-ish token count for tokens-per-minute pacing: the prompt and every sample's `max_tokens`."""
        return self.estimated_input_tokens() + self.max_tokens * self.n


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

    def sdk_error(self, exc: Exception, sdk) -> ProviderError:
        """`exc`, raised by `sdk` (the openai or the anthropic module: one generator writes both SDKs, with the
        same exception classes under the same names), as a ProviderError that says whether a retry can help."""
        if isinstance(exc, sdk.APIStatusError):
            return self.error(exc.message, status=exc.status_code, headers=exc.response.headers)
        if isinstance(exc, sdk.APIConnectionError):  # includes APITimeoutError
            return self.error(f"{type(exc).__name__}: {exc}", retryable=True)
        if isinstance(exc, (sdk.APIResponseValidationError, json.JSONDecodeError)):
            return self.error(f"unreadable response ({type(exc).__name__}: {exc})", retryable=True)
        return self.error(f"{type(exc).__name__}: {exc}", retryable=False)

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
