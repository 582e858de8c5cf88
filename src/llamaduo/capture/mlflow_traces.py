"""MLflow traces (`mlflow.openai.autolog()` and the other flavours' chat spans) -> `Exchange`s.

Traces are read a page at a time with `MlflowClient.search_traces` (MLflow's paged form of `mlflow.search_traces`),
oldest first, so memory holds one page. A trace's model call is its chat span (span type CHAT_MODEL, or LLM): the
span's inputs are the request (`messages`, as the OpenAI-format flavours record them) and its outputs the chat
completion (or an Anthropic message, with the system prompt beside the messages). A trace with several chat spans
(an agent's steps) gives its last one, the answer the user saw.
Ratings are the trace's assessments (`mlflow.log_feedback`, or a rating given in the MLflow UI): the newest valid
one of `rating_name` decides.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator

from llamaduo.capture.record import CaptureError, Exchange
from llamaduo.urls import mask_url

CHAT_SPANS = ("CHAT_MODEL", "LLM")


def tracking_uri(pm) -> str:
    import mlflow

    return pm.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


def query(pm) -> dict:
    return {k: v for k, v in {"tracking_uri": mask_url(tracking_uri(pm)), "experiment": pm.experiment, "filter": pm.filter,
                              "rating": {"name": pm.rating_name, "values": pm.rating_values} if pm.rating_name else None
                              }.items() if v is not None}


def _reachable(uri: str) -> None:
    """A tracking server that does not answer is an error now, not after MLflow's retries (minutes of backoff)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10):
            pass
    except (urllib.error.URLError, OSError) as exc:
        raise CaptureError(f"cannot reach the MLflow tracking server at {mask_url(uri)} ({getattr(exc, 'reason', exc)}); "
                           "check `capture.mlflow.tracking_uri` or MLFLOW_TRACKING_URI") from None


def _rating(info, pm) -> str | None:
    if not pm.rating_name:
        return None
    found = [a for a in (info.assessments or []) if a.name == pm.rating_name and getattr(a, "valid", True) is not False
             and getattr(a, "feedback", None) is not None]
    if not found:
        return "unrated"
    value = max(found, key=lambda a: a.create_time_ms or 0).feedback.value
    # 1 == True in Python: a value counts only when its type is the listed one's too
    return "positive" if any(value == v and type(value) is type(v) for v in pm.rating_values) else "negative"


def _exchange(trace, pm, link_base: str | None) -> Exchange:
    info = trace.info
    tid = info.trace_id
    where = f"MLflow trace {tid}"
    spans = [s for s in trace.data.spans if s.span_type in CHAT_SPANS]
    state = str(getattr(info.state, "value", info.state))
    link = f"{link_base}/#/experiments/{info.experiment_id}/traces?selectedEvaluationId={tid}" if link_base else None
    common = dict(source="mlflow", source_id=tid, where=where, time_ms=info.request_time, tags=dict(info.tags or {}),
                  link=link, rating=_rating(info, pm))
    if not spans:
        kinds = sorted({str(s.span_type) for s in trace.data.spans}) or ["no spans"]
        return Exchange(messages=None, response=None, operation="/".join(kinds).lower(), failed=state == "ERROR", **common)
    span = max(spans, key=lambda s: s.start_time_ns or 0)
    failed = state == "ERROR" or str(getattr(span.status.status_code, "value", span.status.status_code)) == "ERROR"
    inputs, outputs = span.inputs or {}, span.outputs
    messages = inputs.get("messages") if isinstance(inputs, dict) else None
    if messages is None and not failed:
        raise CaptureError(f"{where}: its chat span {span.name!r} records no `messages` input (a prompt-only completion); "
                           "capture reads chat calls")
    response, finish, tool, model, usage = None, None, False, None, {}
    if isinstance(outputs, dict) and outputs.get("choices"):  # OpenAI chat completion (openai, litellm flavours)
        choice = outputs["choices"][0]
        message = choice.get("message") or {}
        response, finish = message.get("content"), choice.get("finish_reason")
        tool = bool(message.get("tool_calls") or message.get("function_call"))
        model = outputs.get("model")
        u = outputs.get("usage") or {}
        usage = {"input_tokens": u.get("prompt_tokens"), "output_tokens": u.get("completion_tokens")}
    elif isinstance(outputs, dict) and isinstance(outputs.get("content"), list):  # Anthropic Messages (anthropic flavour)
        blocks = outputs["content"]
        tool = any(isinstance(b, dict) and b.get("type") == "tool_use" for b in blocks)
        response = "".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text") or None
        finish, model = outputs.get("stop_reason"), outputs.get("model")
        usage = {k: (outputs.get("usage") or {}).get(k) for k in ("input_tokens", "output_tokens")}
        system = inputs.get("system") if isinstance(inputs, dict) else None
        if system and messages is not None:  # Anthropic takes the system prompt beside the messages
            messages = [{"role": "system", "content": system}, *messages]
    elif isinstance(outputs, str):
        response = outputs
    model = model or span.attributes.get("mlflow.llm.model") or (inputs.get("model") if isinstance(inputs, dict) else None)
    return Exchange(messages=messages or [], response=response, failed=failed, answer_tool_calls=tool, finish_reason=finish,
                    model=model, usage=usage, **common)


def read(pm) -> Iterator[Exchange]:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(pm)
    _reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        exp = client.get_experiment_by_name(pm.experiment)
    except MlflowException as exc:
        raise CaptureError(f"MLflow at {mask_url(uri)}: {exc.message}") from None
    if exp is None:
        raise CaptureError(f"`capture.mlflow.experiment`: no experiment named {pm.experiment!r} at {mask_url(uri)}")
    link_base = pm.ui_uri or (uri.rstrip("/") if uri.startswith(("http://", "https://")) else None)
    token = None
    while True:
        try:
            page = client.search_traces(locations=[exp.experiment_id], filter_string=pm.filter, max_results=pm.page_size,
                                        order_by=["timestamp_ms ASC"], page_token=token)
        except MlflowException as exc:
            raise CaptureError(f"MLflow at {mask_url(uri)}: search_traces failed ({exc.message}); check "
                               "`capture.mlflow.filter`") from None
        for trace in page:
            yield _exchange(trace, pm, link_base)
        token = page.token
        if not token:
            return
