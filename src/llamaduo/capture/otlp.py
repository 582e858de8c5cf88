"""OTLP JSON files of GenAI spans (OpenTelemetry's GenAI semantic conventions) -> `Exchange`s.

A file holds one OTLP `ExportTraceServiceRequest` a line, as OpenTelemetry's file exporters write it (the Python
`opentelemetry-exporter-otlp-json-file`, the Collector's `file` exporter); a file that is one such JSON document
reads the same. Each line is decoded by `opentelemetry-proto-json` (hex trace and span ids, int64 as strings, as the
OTLP/JSON spec says). A span is a model call when it has `gen_ai.operation.name`; other spans (HTTP, agents' own
steps) are not calls and are passed over. The chat is read from the current conventions (`gen_ai.system_instructions`,
`gen_ai.input.messages`, `gen_ai.output.messages`) or, for instrumentations that predate them (OpenLLMetry), the
indexed `gen_ai.prompt.N.*` / `gen_ai.completion.N.*` attributes.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path

# attribute names of the GenAI semantic conventions, from the package that publishes them
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as GA  # noqa: N812

from llamaduo.capture.record import CaptureError, Exchange, text_of

TOOL_PARTS = frozenset({"tool_call", "tool_call_response"})


def _value(v):
    """An OTLP AnyValue as Python (strings, numbers, lists, dicts)."""
    if v is None:
        return None
    for name in ("string_value", "bool_value", "int_value", "double_value"):
        x = getattr(v, name)
        if x is not None:
            return x
    if v.array_value is not None:
        return [_value(x) for x in v.array_value.values]
    if v.kvlist_value is not None:
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if v.bytes_value is not None:
        return v.bytes_value
    return None


def _attrs(kvs) -> dict:
    return {kv.key: _value(kv.value) for kv in kvs}


def _json_attr(attrs: dict, key: str, where: str):
    raw = attrs.get(key)
    if raw is None or not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CaptureError(f"{where}: `{key}` is not valid JSON ({exc.msg})") from None


def _from_parts(message: dict) -> tuple[dict, bool]:
    """A GenAI message ({role, parts: [{type, content}]}) as an OpenAI-shaped one, and whether it is a tool turn."""
    parts = message.get("parts") or []
    tool = any(isinstance(p, dict) and p.get("type") in TOOL_PARTS for p in parts)
    return {"role": message.get("role"), "content": [p for p in parts if not (isinstance(p, dict) and p.get("type") in TOOL_PARTS)]}, tool


def _chat_current(attrs: dict, where: str):
    """(messages, answer, answer is a tool call, finish reason) from the current GenAI message attributes."""
    inputs = _json_attr(attrs, GA.GEN_AI_INPUT_MESSAGES, where)
    if inputs is None:
        return None
    system = _json_attr(attrs, GA.GEN_AI_SYSTEM_INSTRUCTIONS, where)
    messages = [{"role": "system", "content": system}] if system else []
    for m in inputs:
        msg, tool = _from_parts(m)
        messages.append({**msg, "tool_calls": True} if tool else msg)
    outputs = _json_attr(attrs, GA.GEN_AI_OUTPUT_MESSAGES, where) or []
    answer, answer_tool, finish = None, False, None
    if outputs:
        msg, answer_tool = _from_parts(outputs[0])
        answer, finish = text_of(msg["content"]), outputs[0].get("finish_reason")
    return messages, answer, answer_tool, finish


def _chat_indexed(attrs: dict):
    """The same from OpenLLMetry's `gen_ai.prompt.N.role/content` and `gen_ai.completion.N.*` attributes."""
    if f"{GA.GEN_AI_PROMPT}.0.role" not in attrs:
        return None
    messages, i = [], 0
    while f"{GA.GEN_AI_PROMPT}.{i}.role" in attrs:
        pre = f"{GA.GEN_AI_PROMPT}.{i}"
        msg = {"role": attrs[f"{pre}.role"], "content": attrs.get(f"{pre}.content")}
        if any(k.startswith(f"{pre}.tool_calls.") for k in attrs):
            msg["tool_calls"] = True
        messages.append(msg)
        i += 1
    pre = f"{GA.GEN_AI_COMPLETION}.0"
    answer_tool = any(k.startswith(f"{pre}.tool_calls.") for k in attrs)
    return messages, attrs.get(f"{pre}.content"), answer_tool, attrs.get(f"{pre}.finish_reason")


def _exchange(span, resource: dict, where: str) -> Exchange | None:
    attrs = _attrs(span.attributes)
    operation = attrs.get(GA.GEN_AI_OPERATION_NAME)
    if operation is None:
        return None
    span_id = span.span_id.hex()
    where = f"{where}: span {span_id}"
    chat = _chat_current(attrs, where) or _chat_indexed(attrs)
    messages, answer, answer_tool, finish = chat if chat else (None, None, False, None)
    reasons = attrs.get(GA.GEN_AI_RESPONSE_FINISH_REASONS)
    if finish is None and reasons:
        finish = reasons[0] if isinstance(reasons, list) else reasons
    usage = {k: attrs[a] for k, a in (("input_tokens", GA.GEN_AI_USAGE_INPUT_TOKENS), ("output_tokens", GA.GEN_AI_USAGE_OUTPUT_TOKENS),
                                      ("input_tokens", GA.GEN_AI_USAGE_PROMPT_TOKENS),
                                      ("output_tokens", GA.GEN_AI_USAGE_COMPLETION_TOKENS)) if a in attrs}
    code = int(span.status.code or 0) if span.status is not None else 0
    tags = {k: str(v) for k, v in {**resource, **attrs}.items() if isinstance(v, (str, int, float, bool))}
    return Exchange(
        source="otlp", source_id=span_id, where=where, messages=messages if chat else None, response=answer,
        failed=code == 2 or "error.type" in attrs,  # STATUS_CODE_ERROR, or the conventions' error attribute
        answer_tool_calls=answer_tool, finish_reason=finish,
        model=attrs.get(GA.GEN_AI_RESPONSE_MODEL) or attrs.get(GA.GEN_AI_REQUEST_MODEL), usage=usage,
        time_ms=(span.start_time_unix_nano or 0) // 1_000_000 or None, tags=tags,
        operation="chat" if operation == "chat" else str(operation))


def files(patterns: list[str]) -> list[Path]:
    """The files the patterns name (globs), each once, sorted; a pattern that names none is an error."""
    out = []
    for pattern in patterns:
        found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not found:
            raise CaptureError(f"`capture.otlp.files`: {pattern!r} names no file")
        out += found
    return sorted(set(out))


def read(path: Path) -> Iterator[Exchange]:
    from opentelemetry.proto_json.collector.trace.v1.trace_service import ExportTraceServiceRequest

    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    if text.lstrip().startswith("{") and len([s for s in lines if s.strip()]) > 1:
        try:  # one pretty-printed document, not one request a line
            json.loads(text)
            lines = [text.replace("\n", " ")]
        except json.JSONDecodeError:
            pass
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            request = ExportTraceServiceRequest.from_json(line)
        except (ValueError, TypeError) as exc:
            raise CaptureError(f"{where}: not an OTLP JSON trace export ({exc})") from None
        for rs in request.resource_spans:
            resource = _attrs(rs.resource.attributes) if rs.resource is not None else {}
            for ss in rs.scope_spans:
                for span in ss.spans:
                    ex = _exchange(span, resource, where)
                    if ex is not None:
                        yield ex
