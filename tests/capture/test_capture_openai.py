"""OpenAI stored completions: the real `openai` SDK stores calls (`store=True` + metadata) on a loopback server that
speaks the stored-completions list endpoints, and capture reads them back with `chat.completions.list` and
`.messages.list`."""

import json

import openai
import pytest

from fakes.mlflow_server import free_port
from fakes.openai_stored import FakeStoredOpenAI
from llamaduo.capture import CaptureError, capture
from llamaduo.config import Params

SYSTEM = "You summarize support tickets in one sentence."


def _answer(request, i):
    return "Summary: " + request["messages"][-1]["content"].split(":", 1)[-1].strip()


def _params(tmp_path, base_url, **openai_extra):
    return Params.model_validate({
        "data": {"coverage_dir": str(tmp_path / "coverage"), "tasks": ["summarize"], "train_ratio": 0.5, "seed": 0},
        # pii: keep: the secrets rules are the same for every source (tests/capture/test_capture_otlp.py)
        "capture": {"pii": "keep", "openai": {"enabled": True, "base_url": base_url, "metadata": {"feature": "tickets"}, "page_size": 2,
                               **openai_extra}}})


class CountingStored(FakeStoredOpenAI):
    """Counts the requests for a completion's messages, by completion id."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.message_calls: list[str] = []

    def route(self, method, path, body):
        if method == "GET" and path.endswith("/messages"):
            self.message_calls.append(path.split("/")[-2])
        return super().route(method, path, body)


def _send(client, prompt, *, metadata, store=True, fake=None, fault=None):
    if fault:
        fake.faults.append(fault)
    out = client.chat.completions.create(model="gpt-4o-mini", store=store, metadata=metadata,
                                         messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}])
    return out.id


def test_stored_completions_become_rows_and_a_second_capture_adds_only_new_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    tickets = {"feature": "tickets", "task": "summarize"}
    with CountingStored(answer=_answer) as fake:
        client = openai.OpenAI(base_url=fake.base_url, max_retries=0)
        kept = [_send(client, "Ticket 1: the invoice shows a double charge.", metadata=tickets),
                _send(client, "Ticket 2: the app crashes on start.", metadata=tickets)]
        _send(client, "Ticket 3: other feature.", metadata={"feature": "chat", "task": "summarize"})
        _send(client, "Ticket 4: not stored.", metadata=tickets, store=False)
        truncated = _send(client, "Ticket 5: a long one.", metadata=tickets, fake=fake, fault=("truncated",))
        kept.append(_send(client, "Ticket 6: the export drops a column.", metadata=tickets))
        summary = capture(_params(tmp_path, fake.base_url), summary_out=None)
        path = tmp_path / "coverage" / "summarize" / "openai.jsonl"
        rows = [json.loads(s) for s in path.read_text().splitlines()]
        assert [r["source_id"] for r in rows] == kept
        assert rows[0]["messages"] == [{"role": "system", "content": SYSTEM},
                                       {"role": "user", "content": "Ticket 1: the invoice shows a double charge."},
                                       {"role": "assistant", "content": "Summary: the invoice shows a double charge."}]
        assert json.loads(rows[0]["capture_query"])["metadata"] == {"feature": "tickets"}
        s = summary["sources"]["openai"]
        assert (s["read"], s["kept"], s["dropped"]) == (4, 3, {"truncated": 1})
        assert fake.list_calls >= 2  # two a page: the SDK followed the cursor

        before = path.read_bytes()
        new = _send(client, "Ticket 7: the search misses recent orders.", metadata=tickets)
        fake.message_calls.clear()
        summary = capture(_params(tmp_path, fake.base_url), summary_out=None)
        after = path.read_bytes()
        assert after.startswith(before) and [json.loads(x)["source_id"] for x in after[len(before):].splitlines()] == [new]
        s = summary["sources"]["openai"]
        assert (s["already_captured"], s["dropped"], s["dropped_before"]) == (3, {}, {"truncated": 1})
        # the truncated completion, dropped before, costs no messages request this time
        assert sorted(fake.message_calls) == sorted([*kept, new]) and truncated not in fake.message_calls

    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(CaptureError, match=rf"cannot reach the OpenAI API at {dead}"):
        capture(_params(tmp_path, dead), summary_out=None)
    assert path.read_bytes() == after
