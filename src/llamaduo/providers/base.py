"""The provider interface: every call the pipeline makes to a service LLM goes through one of these."""

from __future__ import annotations

import abc
import json
from dataclasses import asdict, dataclass, field


class ProviderError(RuntimeError):
    """A provider call failed for good; the message names provider, model and cause."""


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


@dataclass
class Choice:
    text: str
    finish_reason: str | None


@dataclass
class ChatResult:
    choices: list[Choice]
    input_tokens: int = 0
    output_tokens: int = 0
    cached: bool = False
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"choices": [asdict(c) for c in self.choices], "input_tokens": self.input_tokens,
                           "output_tokens": self.output_tokens})

    @classmethod
    def from_json(cls, s: str) -> "ChatResult":
        d = json.loads(s)
        return cls([Choice(**c) for c in d["choices"]], d["input_tokens"], d["output_tokens"], cached=True)


class Provider(abc.ABC):
    """A service LLM. Use as a context manager: `__enter__` acquires what it needs (a server, a client)."""

    def __init__(self, name: str, params):
        self.name = name
        self.params = params

    @property
    def model(self) -> str:
        return self.params.model

    def identity(self) -> str:
        """What the call cache keys on besides the request: kind and model (and, for local weights, their content)."""
        return f"{self.params.kind}:{self.params.model}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    async def aclose(self) -> None:
        """Release what belongs to one event loop (HTTP clients); the call engine calls it after each run."""

    @abc.abstractmethod
    async def chat(self, request: ChatRequest) -> ChatResult:
        """Send one request; raise ProviderError when it fails for good."""
