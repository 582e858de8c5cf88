"""One recorded model call as every source gives it (`Exchange`), and how it becomes a coverage row or a counted drop.

A source reads its own format with that format's SDK and fills an `Exchange`; everything after that (selection,
hygiene, writing) is the same for all sources. The request's messages are the chat as sent (OpenAI roles: an
optional system or developer message, then user and assistant turns); the response is the answer's text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from llamaduo.errors import UserError

# finish reasons of an answer the model stopped early: the row would teach the local model to stop mid-sentence
TRUNCATED = frozenset({"length", "max_tokens", "max_output_tokens", "MAX_TOKENS"})
TOOL_ROLES = frozenset({"tool", "function", "ipython"})


class CaptureError(UserError):
    """A source is unreachable or a recorded call cannot become a row; the message names the trace, span or
    completion id (or the file and line)."""


@dataclass
class Exchange:
    source: str                      # "mlflow", "openai", "otlp"
    source_id: str                   # the trace, completion or span id in that source
    where: str                       # how an error names it: "MLflow trace tr-1", "file.jsonl:3 span 00f0..."
    messages: list | None            # the request's messages as recorded (None: the call was not a chat call)
    response: str | None             # the answer's text (None: no answer recorded)
    failed: bool = False             # the call failed (an error status)
    answer_tool_calls: bool = False  # the answer called a tool instead of answering
    finish_reason: str | None = None
    model: str | None = None
    usage: dict = field(default_factory=dict)
    time_ms: int | None = None       # when the call was made, in ms since the epoch
    tags: dict = field(default_factory=dict)  # tag / metadata / attribute name -> value, as text
    operation: str = "chat"          # what kind of call it was (GenAI `gen_ai.operation.name`)
    link: str | None = None          # where a person can look at it (the MLflow UI)
    rating: str | None = None        # MLflow: "positive", "negative" or "unrated" (None: the source has no ratings)


def text_of(content) -> str | None:
    """A message's text: a string, or the text parts of a content list (OpenAI `{"type": "text", "text"}` and
    GenAI `{"type": "text", "content"}`) joined; None when it holds anything but text (an image, audio)."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
                out.append(part.get("text") if "text" in part else part.get("content") or "")
            else:
                return None
        return "".join(out)
    return None


def chat(ex: Exchange) -> tuple[dict | None, str | None]:
    """(the coverage row's `messages`-shaped object, None) or (None, the drop reason) for a call that passed
    selection. Raises CaptureError, naming the call, for a record that is not a chat call or has no answer."""
    if ex.messages is None or ex.operation != "chat":
        raise CaptureError(f"{ex.where}: a {ex.operation!r} call, not a chat call; capture reads chat completions "
                           "(narrow the query to chat calls, or set `capture.skip_non_chat: true` to count and skip them)")
    if ex.answer_tool_calls:
        return None, "tool_call"
    if ex.finish_reason in TRUNCATED:
        return None, "truncated"
    if ex.response is None or not ex.response.strip():
        raise CaptureError(f"{ex.where}: the call has no answer recorded (an empty or missing response); a coverage "
                           "row needs the answer the service gave")
    messages = []
    for m in ex.messages:
        if not isinstance(m, dict):
            raise CaptureError(f"{ex.where}: a request message is {type(m).__name__}, not an object with `role` and `content`")
        role = m.get("role")
        if role in TOOL_ROLES or m.get("tool_calls") or m.get("function_call"):
            return None, "tool_call"
        text = text_of(m.get("content"))
        if text is None:
            return None, "not_text"
        messages.append({"role": role, "content": text})
    messages.append({"role": "assistant", "content": ex.response})
    return {"messages": messages}, None


def query_text(query: dict) -> str:
    """The capture query as the row records it: compact JSON with sorted keys, so the same query reads the same."""
    return json.dumps(query, sort_keys=True, separators=(",", ":"), default=str)
