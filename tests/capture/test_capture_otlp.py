"""OTLP JSON files written by the real opentelemetry-sdk (its JSON file exporter) -> a task's coverage rows."""

import json

import pytest
from opentelemetry.exporter.otlp.json.file import FileSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from conftest import no_robots_row, write_jsonl
from llamaduo.capture import CaptureError, capture
from llamaduo.config import Params
from llamaduo.coverage import load_task

SENTINEL_KEY = "sk-proj-" + "Q7w8E9r0T1y2U3i4O5p6" * 2 + "T3BlbkFJ" + "A1s2D3f4G5h6J7k8L9z0" * 2
SENTINEL_MAIL = "jane.sentinel@example.com"
SYSTEM = "You summarize support tickets in one sentence."


def _gen_ai(tracer, *, prompt, answer, task="summarize", model="gpt-4o-mini-2024-07-18", finish="stop", history=(),
            error=False, answer_tool=False, operation="chat", output=True):
    with tracer.start_as_current_span(f"{operation} {model}") as span:
        span.set_attribute("gen_ai.operation.name", operation)
        span.set_attribute("gen_ai.request.model", "gpt-4o-mini")
        span.set_attribute("gen_ai.response.model", model)
        span.set_attribute("gen_ai.usage.input_tokens", 30)
        span.set_attribute("gen_ai.usage.output_tokens", 12)
        span.set_attribute("gen_ai.response.finish_reasons", [finish])
        if task:
            span.set_attribute("task", task)
        span.set_attribute("gen_ai.system_instructions", json.dumps([{"type": "text", "content": SYSTEM}]))
        turns = [{"role": r, "parts": [{"type": "text", "content": c}]} for r, c in history]
        turns.append({"role": "user", "parts": [{"type": "text", "content": prompt}]})
        span.set_attribute("gen_ai.input.messages", json.dumps(turns))
        if output:
            parts = ([{"type": "tool_call", "name": "lookup", "arguments": {"q": prompt}}] if answer_tool
                     else [{"type": "text", "content": answer}])
            span.set_attribute("gen_ai.output.messages", json.dumps([{"role": "assistant", "parts": parts,
                                                                      "finish_reason": finish}]))
        if error:
            span.set_status(Status(StatusCode.ERROR, "rate limited"))
            span.set_attribute("error.type", "429")
        return format(span.get_span_context().span_id, "016x")


def _openllmetry(tracer, *, prompt, answer):
    """A span as OpenLLMetry writes it (indexed prompt/completion attributes)."""
    with tracer.start_as_current_span("openai.chat") as span:
        span.set_attribute("gen_ai.operation.name", "chat")
        span.set_attribute("gen_ai.response.model", "gpt-4o-mini")
        span.set_attribute("task", "summarize")
        for i, (role, content) in enumerate([("system", SYSTEM), ("user", prompt)]):
            span.set_attribute(f"gen_ai.prompt.{i}.role", role)
            span.set_attribute(f"gen_ai.prompt.{i}.content", content)
        span.set_attribute("gen_ai.completion.0.role", "assistant")
        span.set_attribute("gen_ai.completion.0.content", answer)
        span.set_attribute("gen_ai.completion.0.finish_reason", "stop")
        return format(span.get_span_context().span_id, "016x")


def _export(path, write):
    """Spans written by the SDK's OTLP JSON file exporter (one ExportTraceServiceRequest a line)."""
    provider = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
    with open(path, "a") as stream:
        provider.add_span_processor(SimpleSpanProcessor(FileSpanExporter(stream=stream)))
        out = write(provider.get_tracer("llm"))
        provider.shutdown()
    return out


def _params(tmp_path, files, **capture_extra):
    return Params.model_validate({
        "data": {"coverage_dir": str(tmp_path / "coverage"), "tasks": ["summarize"], "train_ratio": 0.75, "seed": 1},
        "capture": {"otlp": {"files": files}, "mlflow": {"rating_name": None}, "models": ["gpt-4o-mini"], **capture_extra}})


def _first_traffic(tracer):
    ids = {}
    ids["kept"] = _gen_ai(tracer, prompt="Ticket 1: my invoice shows a double charge for March, please fix it.",
                          answer="The customer was charged twice for March and wants a refund.",
                          history=[("user", "Hi, I have a billing question."), ("assistant", "Sure, paste the ticket.")])
    ids["secret"] = _gen_ai(tracer, prompt=f"Ticket 2: login fails; my key {SENTINEL_KEY}, reach me at {SENTINEL_MAIL}.",
                            answer=f"The user {SENTINEL_MAIL} cannot log in with their API key.")
    ids["failed"] = _gen_ai(tracer, prompt="Ticket 3: the app crashes on start.", answer="", error=True)
    ids["tool"] = _gen_ai(tracer, prompt="Ticket 4: where is my parcel 42?", answer=None, answer_tool=True)
    ids["truncated"] = _gen_ai(tracer, prompt="Ticket 5: a very long complaint about shipping delays.", answer="The customer",
                               finish="length")
    ids["model"] = _gen_ai(tracer, prompt="Ticket 6: password reset mail never arrives.", answer="Reset mail missing.",
                           model="claude-3-5-haiku")
    ids["no_task"] = _gen_ai(tracer, prompt="Ticket 7: dark mode please.", answer="Wants dark mode.", task=None)
    ids["dup"] = _gen_ai(tracer, prompt=no_robots_row(0)["messages"][0]["content"], answer=no_robots_row(0)["messages"][1]["content"])
    ids["legacy"] = _openllmetry(tracer, prompt="Ticket 8: the export to CSV drops the last column.",
                                 answer="CSV export loses its last column.")
    with tracer.start_as_current_span("GET /health"):  # not a model call: passed over
        pass
    return ids


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("otlp")
    write_jsonl(tmp / "coverage" / "summarize.jsonl", [no_robots_row(i) for i in range(4)])
    ids = _export(tmp / "spans.jsonl", _first_traffic)
    summary = capture(_params(tmp, [str(tmp / "spans.jsonl")]), summary_out=tmp / "capture.json")
    return tmp, ids, summary


def test_spans_become_rows_with_system_prompt_history_and_provenance(first):
    tmp, ids, summary = first
    rows = [json.loads(s) for s in (tmp / "coverage" / "summarize" / "otlp.jsonl").read_text().splitlines()]
    assert [r["source_id"] for r in rows] == [ids["kept"], ids["secret"], ids["legacy"]]
    assert rows[0]["id"] == f"otlp:{ids['kept']}" and rows[0]["source"] == "otlp"
    assert json.loads(rows[0]["capture_query"])["files"] == [str(tmp / "spans.jsonl")]
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert rows[0]["messages"][0]["content"] == SYSTEM and rows[2]["messages"][1]["content"].startswith("Ticket 8")
    pairs = {r["id"]: r for r in load_task(tmp / "coverage", "summarize")}  # prepare reads the hand file and the capture
    assert len(pairs) == 4 + 3 and pairs[f"otlp:{ids['kept']}"]["history"][0]["content"] == "Hi, I have a billing question."


def test_drops_are_counted_by_reason(first):
    _, _, summary = first
    s = summary["sources"]["otlp"]
    assert s["read"] == 9 and s["kept"] == 3
    assert s["dropped"] == {"failed": 1, "tool_call": 1, "truncated": 1, "model": 1, "no_task": 1, "exact_duplicate_train": 1}
    assert summary["tasks"]["summarize"]["added"] == {"otlp": 3} and summary["tasks"]["summarize"]["held"] == 4


def test_sentinel_secrets_are_redacted_and_written_nowhere(first):
    tmp, ids, summary = first
    assert summary["pii"] == {"api_key": 1, "email": 2, "phone": 0, "card": 0}
    written = [p for p in tmp.rglob("*") if p.is_file() and p.name != "spans.jsonl"]
    assert written and all(SENTINEL_KEY not in p.read_text() and SENTINEL_MAIL not in p.read_text() for p in written)
    row = next(json.loads(s) for s in (tmp / "coverage" / "summarize" / "otlp.jsonl").read_text().splitlines()
               if ids["secret"] in s)
    assert "<API_KEY>" in row["messages"][1]["content"] and "<EMAIL>" in row["messages"][2]["content"]


def test_a_second_capture_adds_only_the_new_spans(first, tmp_path):
    tmp, ids, _ = first
    import shutil

    shutil.copytree(tmp / "coverage", tmp_path / "coverage")
    shutil.copy(tmp / "spans.jsonl", tmp_path / "spans.jsonl")
    before = (tmp_path / "coverage" / "summarize" / "otlp.jsonl").read_bytes()
    new = _export(tmp_path / "spans.jsonl", lambda t: _gen_ai(t, prompt="Ticket 9: the mobile app logs me out hourly.",
                                                              answer="The app logs the user out every hour."))
    summary = capture(_params(tmp_path, [str(tmp_path / "spans.jsonl")]), summary_out=None)
    after = (tmp_path / "coverage" / "summarize" / "otlp.jsonl").read_bytes()
    assert after.startswith(before) and [json.loads(s)["source_id"] for s in after[len(before):].splitlines()] == [new]
    assert summary["sources"]["otlp"]["already_captured"] == 3 and summary["sources"]["otlp"]["kept"] == 1


def test_pii_drop_drops_the_row(first, tmp_path):
    tmp, ids, _ = first
    write_jsonl(tmp_path / "coverage" / "summarize.jsonl", [no_robots_row(i) for i in range(4)])
    summary = capture(_params(tmp_path, [str(tmp / "spans.jsonl")], pii="drop"), summary_out=None)
    assert summary["sources"]["otlp"]["dropped"]["pii"] == 1 and summary["sources"]["otlp"]["kept"] == 2


@pytest.mark.parametrize("write,msg", [
    (lambda t: _gen_ai(t, prompt="Ticket: no answer recorded.", answer=None, output=False), "has no answer recorded"),
    (lambda t: _gen_ai(t, prompt="embed me", answer="x", operation="embeddings"), "a 'embeddings' call, not a chat call"),
    (lambda t: _gen_ai(t, prompt="Ticket: a huge answer.", answer="x" * (1 << 20)), "the row holds 1,048,8"),  # MAX_ROW_BYTES
])
def test_bad_spans_are_errors_naming_the_span_and_nothing_is_written(tmp_path, write, msg):
    span_id = _export(tmp_path / "spans.jsonl", write)
    write_jsonl(tmp_path / "coverage" / "summarize" / "otlp.jsonl", [{"id": "otlp:old", "prompt": "p", "response": "r",
                                                                        "source": "otlp", "source_id": "old"}])
    before = (tmp_path / "coverage" / "summarize" / "otlp.jsonl").read_bytes()
    with pytest.raises(CaptureError, match=rf"spans.jsonl:1: span {span_id}: .*{msg}"):
        capture(_params(tmp_path, [str(tmp_path / "spans.jsonl")]), summary_out=None)
    assert (tmp_path / "coverage" / "summarize" / "otlp.jsonl").read_bytes() == before


def test_a_broken_file_names_file_and_line(tmp_path):
    (tmp_path / "spans.jsonl").write_text('{"resourceSpans": []}\n{"resourceSpans": [{"scopeSpans": [\n')
    with pytest.raises(CaptureError, match=r"spans.jsonl:2: not an OTLP JSON trace export"):
        capture(_params(tmp_path, [str(tmp_path / "spans.jsonl")]), summary_out=None)
    with pytest.raises(CaptureError, match=r"`capture.otlp.files`: '.*nothing\*.jsonl' names no file"):
        capture(_params(tmp_path, [str(tmp_path / "nothing*.jsonl")]), summary_out=None)


def test_the_cli_command_prints_the_summary_and_dry_run_writes_nothing(first, tmp_path, capsys, monkeypatch):
    import yaml

    from llamaduo.cli import main

    tmp, _, _ = first
    write_jsonl(tmp_path / "data" / "coverage" / "summarize.jsonl", [no_robots_row(i) for i in range(4)])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "data": {"tasks": ["summarize"], "train_ratio": 0.75, "seed": 1},
        "capture": {"otlp": {"files": [str(tmp / "spans.jsonl")]}, "models": ["gpt-4o-mini"]}}))
    monkeypatch.chdir(tmp_path)
    assert main(["capture", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ("otlp: read 9, kept 3 new, 0 already captured; dropped: exact_duplicate_train 1, failed 1, model 1, no_task 1, "
            "tool_call 1, truncated 1") in out
    assert "task summarize: +3 rows" in out and "secrets and personal data (redact): api_key 1, email 2" in out
    assert not (tmp_path / "data" / "coverage" / "summarize").exists() and not (tmp_path / "metrics").exists()
    assert main(["capture", "--source", "otlp"]) == 0
    assert len((tmp_path / "data" / "coverage" / "summarize" / "otlp.jsonl").read_text().splitlines()) == 3
    assert json.loads((tmp_path / "metrics" / "capture.json").read_text())["sources"]["otlp"]["kept"] == 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"capture": {"otlp": {"files": ["missing/*.jsonl"]}}}))
    assert main(["capture"]) == 2
    assert "error: `capture.otlp.files`: 'missing/*.jsonl' names no file" in capsys.readouterr().err


KILL_AT_SECOND_ROW = """
import json, os, signal, sys, types
import llamaduo.capture.run as run
written = []
def dumps(obj, **kw):  # the second row written: SIGKILL, the file half written to its temp copy
    written.append(1)
    if len(written) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return json.dumps(obj, **kw)
run.json = types.SimpleNamespace(dumps=dumps, loads=json.loads)
from llamaduo.cli import main
sys.exit(main(["capture"]))
"""


def test_a_kill_mid_write_leaves_the_previous_file_whole_and_a_rerun_adds_the_rest(first, tmp_path):
    import subprocess
    import sys

    import yaml

    from conftest import ROOT

    tmp, ids, _ = first
    write_jsonl(tmp_path / "data" / "coverage" / "summarize.jsonl", [no_robots_row(i) for i in range(4)])
    old = {"id": "otlp:old", "prompt": "An older captured ticket.", "response": "Old.", "source": "otlp", "source_id": "old"}
    write_jsonl(tmp_path / "data" / "coverage" / "summarize" / "otlp.jsonl", [old])
    before = (tmp_path / "data" / "coverage" / "summarize" / "otlp.jsonl").read_bytes()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "data": {"tasks": ["summarize"], "train_ratio": 0.75, "seed": 1},
        "capture": {"pii": "keep", "otlp": {"files": [str(tmp / "spans.jsonl")]}, "models": ["gpt-4o-mini"]}}))
    env = {**__import__("os").environ, "PYTHONPATH": f"{ROOT / 'src'}"}
    res = subprocess.run([sys.executable, "-c", KILL_AT_SECOND_ROW], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == -9, res.stderr[-2000:]
    assert (tmp_path / "data" / "coverage" / "summarize" / "otlp.jsonl").read_bytes() == before
    assert len(load_task(tmp_path / "data" / "coverage", "summarize")) == 5  # the temp copy left behind is not read
    res = subprocess.run([sys.executable, "-m", "llamaduo.cli", "capture"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = (tmp_path / "data" / "coverage" / "summarize" / "otlp.jsonl").read_bytes()
    assert rows.startswith(before) and len(rows.splitlines()) == 4


def _counting(monkeypatch):
    """Counts of what judges a call: selection, the secret detectors (rows scrubbed), curation's duplicate checks
    (rows passed to it)."""
    from llamaduo.capture import hygiene
    from llamaduo.capture.select import Selection

    calls = {"decide": 0, "scrubbed": 0, "deduped": 0}
    decide, scrub, dedup = Selection.decide, hygiene.scrub_messages, hygiene.drop_duplicates

    def counted_decide(self, ex):
        calls["decide"] += 1
        return decide(self, ex)

    def counted_scrub(messages, scrubber):
        calls["scrubbed"] += 1
        return scrub(messages, scrubber)

    def counted_dedup(rows, **kw):
        calls["deduped"] += len(rows)
        return dedup(rows, **kw)

    monkeypatch.setattr(Selection, "decide", counted_decide)
    monkeypatch.setattr(hygiene, "scrub_messages", counted_scrub)
    monkeypatch.setattr(hygiene, "drop_duplicates", counted_dedup)
    return calls


def _again(first, tmp_path):
    """A copy of the first capture's coverage folder (with its record of drops) and its spans plus one new span."""
    import shutil

    tmp, ids, _ = first
    shutil.copytree(tmp / "coverage", tmp_path / "coverage")
    shutil.copy(tmp / "spans.jsonl", tmp_path / "spans.jsonl")
    return _export(tmp_path / "spans.jsonl", lambda t: _gen_ai(t, prompt="Ticket 9: the mobile app logs me out hourly.",
                                                               answer="The app logs the user out every hour."))


def test_the_first_capture_records_its_drops_by_id_without_text(first):
    from llamaduo.capture.dropped import STATE_NAME

    tmp, ids, _ = first
    state = json.loads((tmp / "coverage" / STATE_NAME).read_text())
    # no_task is judged again each time: a tag can be set on the call later
    assert {k: v[0] for k, v in state["dropped"].items()} == {
        f"otlp:{ids[k]}": r for k, r in [("failed", "failed"), ("tool", "tool_call"), ("truncated", "truncated"),
                                          ("model", "model"), ("dup", "exact_duplicate_train")]}
    assert all(len(fp) == 16 for _, fp in state["dropped"].values())


def test_a_second_capture_passes_over_the_calls_dropped_before_without_judging_them(first, tmp_path, monkeypatch):
    from llamaduo.capture.dropped import STATE_NAME

    new = _again(first, tmp_path)
    calls = _counting(monkeypatch)
    summary = capture(_params(tmp_path, [str(tmp_path / "spans.jsonl")]), summary_out=None)
    s = summary["sources"]["otlp"]
    assert (s["read"], s["kept"], s["already_captured"]) == (10, 1, 3)
    assert s["dropped_before"] == {"exact_duplicate_train": 1, "failed": 1, "model": 1, "tool_call": 1, "truncated": 1}
    assert s["dropped"] == {"no_task": 1}  # only new drops, and the one judged every time
    # 10 read - 5 dropped before; scrubbed and deduped: only the new span (the 3 captured ones are known by id)
    assert calls == {"decide": 5, "scrubbed": 1, "deduped": 1}
    assert "skipped 5 dropped before" in __import__("llamaduo.capture", fromlist=["report"]).report(summary)
    rows = (tmp_path / "coverage" / "summarize" / "otlp.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["source_id"] == new and len(rows) == 4
    assert len(json.loads((tmp_path / "coverage" / STATE_NAME).read_text())["dropped"]) == 5

    # --recheck judges them all again: the duplicate is scrubbed and deduped again, and dropped again
    calls.update(decide=0, scrubbed=0, deduped=0)
    summary = capture(_params(tmp_path, [str(tmp_path / "spans.jsonl")]), summary_out=None, recheck=True)
    assert calls == {"decide": 10, "scrubbed": 1, "deduped": 1}
    assert summary["sources"]["otlp"]["dropped_before"] == {}
    assert summary["sources"]["otlp"]["dropped"] == {"exact_duplicate_train": 1, "failed": 1, "model": 1, "no_task": 1,
                                                     "tool_call": 1, "truncated": 1}


def test_a_changed_setting_judges_again_the_calls_it_decided(first, tmp_path, monkeypatch):
    from llamaduo.capture.dropped import STATE_NAME

    tmp, ids, _ = first
    _again(first, tmp_path)
    calls = _counting(monkeypatch)
    # the model filter now takes the call it dropped; the duplicate's settings (curation's) are the same
    summary = capture(_params(tmp_path, [str(tmp_path / "spans.jsonl")], models=["gpt-4o-mini", "claude-3-5-haiku"]),
                      summary_out=None)
    s = summary["sources"]["otlp"]
    assert s["dropped_before"] == {"exact_duplicate_train": 1, "failed": 1, "tool_call": 1, "truncated": 1}
    assert s["kept"] == 2 and calls["decide"] == 6
    rows = [json.loads(x) for x in (tmp_path / "coverage" / "summarize" / "otlp.jsonl").read_text().splitlines()]
    assert ids["model"] in [r["source_id"] for r in rows]
    state = json.loads((tmp_path / "coverage" / STATE_NAME).read_text())["dropped"]
    assert f"otlp:{ids['model']}" not in state and len(state) == 4

    # a curation threshold decides duplicates: the duplicate is judged again, dropped again, recorded anew
    old_fp = state[f"otlp:{ids['dup']}"][1]
    p = _params(tmp_path, [str(tmp_path / "spans.jsonl")], models=["gpt-4o-mini", "claude-3-5-haiku"])
    p = p.model_copy(update={"curate": p.curate.model_copy(update={"rouge_l_threshold": 0.8})})
    calls.update(decide=0, scrubbed=0, deduped=0)
    summary = capture(p, summary_out=None)
    assert summary["sources"]["otlp"]["dropped"] == {"exact_duplicate_train": 1, "no_task": 1}
    # 10 read - 3 dropped before (failed, tool call, truncated); scrubbed and deduped: the duplicate alone
    assert calls == {"decide": 7, "scrubbed": 1, "deduped": 1}
    state = json.loads((tmp_path / "coverage" / STATE_NAME).read_text())["dropped"]
    assert state[f"otlp:{ids['dup']}"][0] == "exact_duplicate_train" and state[f"otlp:{ids['dup']}"][1] != old_fp


def test_a_broken_record_of_drops_is_an_error_naming_it(first, tmp_path):
    from llamaduo.capture.dropped import STATE_NAME

    _again(first, tmp_path)
    (tmp_path / "coverage" / STATE_NAME).write_text('{"format": 1, "dropped": ')
    with pytest.raises(CaptureError, match=rf"{STATE_NAME}: not the capture's record of dropped calls"):
        capture(_params(tmp_path, [str(tmp_path / "spans.jsonl")]), summary_out=None)


KILL_IN_RECORD_WRITE = """
import json, os, signal, sys
import llamaduo.atomic as atomic
import llamaduo.capture.dropped as dropped
def write_json(path, obj):  # half the record written to its temp copy, then SIGKILL
    with atomic.replacing(path) as tmp:
        text = json.dumps(obj)
        with open(tmp, "w") as f:
            f.write(text[: len(text) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
dropped.write_json = write_json
from llamaduo.cli import main
sys.exit(main(["capture"]))
"""


def test_a_kill_mid_write_of_the_record_leaves_the_previous_record_whole(first, tmp_path):
    import shutil
    import subprocess
    import sys

    import yaml

    from conftest import ROOT
    from llamaduo.capture.dropped import STATE_NAME

    tmp, ids, _ = first
    shutil.copytree(tmp / "coverage", tmp_path / "data" / "coverage")
    shutil.copy(tmp / "spans.jsonl", tmp_path / "spans.jsonl")
    failed = _export(tmp_path / "spans.jsonl", lambda t: _gen_ai(t, prompt="Ticket 10: timeout.", answer="", error=True))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "data": {"tasks": ["summarize"], "train_ratio": 0.75, "seed": 1},
        "capture": {"otlp": {"files": [str(tmp_path / "spans.jsonl")]}, "models": ["gpt-4o-mini"]}}))
    state = tmp_path / "data" / "coverage" / STATE_NAME
    before = state.read_bytes()
    env = {**__import__("os").environ, "PYTHONPATH": f"{ROOT / 'src'}"}
    res = subprocess.run([sys.executable, "-c", KILL_IN_RECORD_WRITE], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == -9, res.stderr[-2000:]
    assert state.read_bytes() == before  # the half-written temp copy is beside it, never read
    res = subprocess.run([sys.executable, "-m", "llamaduo.cli", "capture"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "dropped: failed 1, no_task 1; skipped 5 dropped before" in res.stdout
    got = json.loads(state.read_text())["dropped"]
    assert len(got) == 6 and got[f"otlp:{failed}"][0] == "failed"
