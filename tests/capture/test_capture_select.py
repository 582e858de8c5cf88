"""Selection by params, one reason per dropped call, and the record -> row rules, without any source."""

import pytest

from llamaduo.capture.record import CaptureError, Exchange
from llamaduo.capture.select import Selection
from llamaduo.config import CaptureParams

SYSTEM = "You summarize tickets."


def _ex(**kw):
    base = dict(source="otlp", source_id="s1", where="f.jsonl:1: span s1", response="A summary.",
                messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Ticket text."}],
                model="gpt-4o-mini-2024-07-18", time_ms=1_767_225_600_000,  # 2026-01-01T00:00:00Z
                tags={"task": "summarize", "route": "support", "env": "prod"})
    return Exchange(**{**base, **kw})


@pytest.mark.parametrize("params,ex,reason", [
    ({}, _ex(failed=True), "failed"),
    ({"tags": {"env": "prod"}}, _ex(tags={"task": "summarize", "env": "dev"}), "tags"),
    ({"models": ["gpt-4o"]}, _ex(), "model"),                 # gpt-4o-mini-... is not a snapshot of gpt-4o
    ({"routes": ["billing"]}, _ex(), "route"),
    ({"since": "2026-01-02"}, _ex(), "time"),
    ({"until": "2026-01-01T00:00:00Z"}, _ex(), "time"),        # until is exclusive
    ({"task_key": None}, _ex(), "no_task"),
    ({}, _ex(rating="unrated"), "unrated"),
    ({}, _ex(rating="negative"), "not_positive"),
    ({}, _ex(answer_tool_calls=True), "tool_call"),
    ({}, _ex(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"id": "1"}]},
                       {"role": "tool", "content": "42"}, {"role": "user", "content": "so?"}]), "tool_call"),
    ({}, _ex(finish_reason="length"), "truncated"),
    ({}, _ex(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), "not_text"),
    ({"skip_non_chat": True}, _ex(operation="embeddings", messages=None), "not_chat"),
])
def test_each_dropped_call_has_one_reason(params, ex, reason):
    assert Selection(CaptureParams.model_validate(params)).decide(ex)[2] == reason


def test_kept_calls_and_their_task():
    task, obj, reason = Selection(CaptureParams.model_validate({"models": ["gpt-4o-mini"], "routes": ["support"],
                                                                "since": "2025-12-31", "until": "2026-01-02",
                                                                "tags": {"env": "prod"}})).decide(_ex())
    assert (task, reason) == ("summarize", None)
    assert obj == {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Ticket text."},
                                {"role": "assistant", "content": "A summary."}]}
    by_system = Selection(CaptureParams.model_validate({"task_key": None, "tasks_by_system": {"tickets": f"  {SYSTEM}\n"}}))
    assert by_system.decide(_ex())[0] == "tickets"
    parts = _ex(messages=[{"role": "user", "content": [{"type": "text", "text": "Ticket "}, {"type": "text", "text": "two."}]}])
    assert Selection(CaptureParams()).decide(parts)[1]["messages"][0] == {"role": "user", "content": "Ticket two."}


@pytest.mark.parametrize("ex,msg", [
    (_ex(operation="embeddings", messages=None), "f.jsonl:1: span s1: a 'embeddings' call, not a chat call"),
    (_ex(response=None), "f.jsonl:1: span s1: the call has no answer recorded"),
    (_ex(response="  "), "f.jsonl:1: span s1: the call has no answer recorded"),
])
def test_records_that_cannot_be_rows_are_errors_naming_them(ex, msg):
    with pytest.raises(CaptureError, match=msg):
        Selection(CaptureParams()).decide(ex)


def test_a_wrong_capture_key_is_named(tmp_path):
    from llamaduo.config import load_params
    from llamaduo.errors import ParamsError

    (tmp_path / "params.yaml").write_text("capture:\n  pii: mask\n  mlflow:\n    tracking_uri: http://u:secret@host\n")
    with pytest.raises(ParamsError, match=r"(?s)`capture.pii`.*`capture.mlflow.tracking_uri`") as err:
        load_params(tmp_path / "params.yaml")
    assert "secret" not in str(err.value)
