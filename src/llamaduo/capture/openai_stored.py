"""OpenAI stored completions (calls made with `store=True`) -> `Exchange`s, read with the `openai` SDK's own list
endpoints: `client.chat.completions.list(metadata=..., model=..., order="asc")` pages through the completions (the
SDK follows the cursor), and `client.chat.completions.messages.list(id)` gives each one's request messages. The
metadata is the call's tags; the time filters of `capture` apply to the completion's `created` time. A completion
that `skip` names (dropped before, with the same settings) costs no messages request: it is given with its id only.
"""

from __future__ import annotations

from collections.abc import Iterator

from llamaduo.capture.record import CaptureError, Exchange
from llamaduo.urls import mask_url


def query(po, c) -> dict:
    return {k: v for k, v in {"base_url": mask_url(po.base_url), "metadata": po.metadata, "model": po.model}.items() if v}


def _client(po):
    import openai

    try:
        return openai.OpenAI(base_url=po.base_url) if po.base_url else openai.OpenAI()
    except openai.OpenAIError as exc:  # no OPENAI_API_KEY
        raise CaptureError(f"OpenAI stored completions: {exc}") from None


def read(po, c, skip=lambda source_id: False) -> Iterator[Exchange]:
    import openai

    client = _client(po)
    where_api = mask_url(str(client.base_url))
    try:
        kwargs = {"metadata": po.metadata or None, "model": po.model, "limit": po.page_size, "order": "asc"}
        for done in client.chat.completions.list(**{k: v for k, v in kwargs.items() if v is not None}):
            where = f"OpenAI stored completion {done.id}"
            if skip(done.id):
                yield Exchange(source="openai", source_id=done.id, where=where, messages=None, response=None)
                continue
            messages = [m.model_dump(exclude_none=True) for m in client.chat.completions.messages.list(done.id, limit=100,
                                                                                                        order="asc")]
            choice = done.choices[0] if done.choices else None
            message = choice.message if choice else None
            yield Exchange(
                source="openai", source_id=done.id, where=where,
                messages=[{k: v for k, v in m.items() if k != "id"} for m in messages],
                response=message.content if message else None,
                answer_tool_calls=bool(message and (message.tool_calls or message.function_call)),
                finish_reason=choice.finish_reason if choice else None, model=done.model,
                usage={"input_tokens": done.usage.prompt_tokens, "output_tokens": done.usage.completion_tokens} if done.usage else {},
                time_ms=done.created * 1000, tags=dict(getattr(done, "metadata", None) or {}))
    except openai.APIConnectionError as exc:
        raise CaptureError(f"cannot reach the OpenAI API at {where_api} ({exc}); check `capture.openai.base_url`") from None
    except openai.APIStatusError as exc:
        raise CaptureError(f"OpenAI stored completions at {where_api}: HTTP {exc.status_code} ({exc.message})") from None
