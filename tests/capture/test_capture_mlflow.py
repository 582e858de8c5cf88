"""MLflow traces on a real `mlflow server`: the real `openai` SDK under `mlflow.openai.autolog()` calls a loopback
OpenAI-format server, people rate some traces with `mlflow.log_feedback`, and capture imports exactly the positively
rated ones, with their system prompt and earlier turns; the pipeline's stages then train an adapter on those rows
alone, answer their test prompts and judge the answers."""

import json
import os
import shutil

import pytest

from conftest import ROOT, no_robots_row, run_stage, write_jsonl
from llamaduo import tables
from llamaduo.capture import CaptureError, capture, report
from llamaduo.config import Params

SENTINEL_MAIL = "max.sentinel@example.org"
SYSTEM = "You summarize support tickets in one sentence."


def _answer(request, i):
    return "Summary: " + request["messages"][-1]["content"].split(":", 1)[-1].strip()


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    """One mlflow server and one fake OpenAI server for the module, and a `send(...)` that makes a traced call."""
    import mlflow
    import openai

    from fakes.mlflow_server import mlflow_server
    from fakes.openai_server import FakeOpenAI

    root = tmp_path_factory.mktemp("mlflow")
    old = {k: os.environ.get(k) for k in ("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "MLFLOW_TRACKING_URI")}
    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"  # each trace is on the server when the call returns
    with mlflow_server(root) as uri, FakeOpenAI(answer=_answer) as fake:
        mlflow.set_tracking_uri(uri)
        exp = mlflow.set_experiment("support-bot")
        mlflow.openai.autolog()
        client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)

        def send(prompt, *, rating=None, task="summarize", history=(), fault=None):
            if fault:
                fake.faults.append(fault)

            @mlflow.trace(name="ticket")
            def call():
                if task:
                    mlflow.update_current_trace(tags={"task": task})
                messages = [{"role": "system", "content": SYSTEM}, *history, {"role": "user", "content": prompt}]
                try:
                    return client.chat.completions.create(model="gpt-4o-mini", messages=messages)
                except openai.APIStatusError:
                    return None

            call()
            tid = mlflow.get_last_active_trace_id()
            if rating is not None:
                mlflow.log_feedback(trace_id=tid, name="user_rating", value=rating)
            return tid

        yield uri, exp, send, root
        mlflow.openai.autolog(disable=True)
    for k, v in old.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _params(coverage, uri, experiment="support-bot", **extra):
    return Params.model_validate({
        "data": {"coverage_dir": str(coverage), "tasks": ["summarize"], "train_ratio": 0.5, "seed": 0},
        "capture": {"mlflow": {"experiment": experiment, "tracking_uri": uri, "page_size": 2}, **extra}})


def _rows(path):
    return [json.loads(s) for s in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def first(traffic, tmp_path_factory):
    uri, exp, send, _ = traffic
    ids = {
        "good": send("Ticket 1: the invoice shows a double charge for March.", rating=True,
                     history=[{"role": "user", "content": "Hi, a billing question."},
                              {"role": "assistant", "content": "Sure, paste the ticket."}]),
        "bad": send("Ticket 2: the app is slow.", rating=False),
        "unrated": send("Ticket 3: dark mode please."),
        "truncated": send("Ticket 4: shipping is late again and again.", rating=True, fault=("truncated",)),
        "failed": send("Ticket 5: crash on start.", rating=True, fault=("status", 400)),
        "mail": send(f"Ticket 6: write back to {SENTINEL_MAIL} about the refund.", rating=True),
    }
    proj = tmp_path_factory.mktemp("proj")
    write_jsonl(proj / "data" / "coverage" / "summarize.jsonl", [no_robots_row(i) for i in range(4)])
    summary = capture(_params(proj / "data" / "coverage", uri), summary_out=proj / "metrics" / "capture.json")
    return proj, ids, summary


def test_capture_imports_exactly_the_positively_rated_traces(first):
    proj, ids, summary = first
    rows = _rows(proj / "data" / "coverage" / "summarize" / "mlflow.jsonl")
    assert [r["source_id"] for r in rows] == [ids["good"], ids["mail"]]
    assert rows[0]["messages"] == [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi, a billing question."},
        {"role": "assistant", "content": "Sure, paste the ticket."},
        {"role": "user", "content": "Ticket 1: the invoice shows a double charge for March."},
        {"role": "assistant", "content": "Summary: the invoice shows a double charge for March."}]
    assert rows[0]["id"] == f"mlflow:{ids['good']}" and json.loads(rows[0]["capture_query"])["experiment"] == "support-bot"
    s = summary["sources"]["mlflow"]
    assert s["read"] == 6 and s["kept"] == 2
    assert s["dropped"] == {"failed": 1, "not_positive": 1, "truncated": 1, "unrated": 1}
    assert s["ratings"] == {"positive": 4, "negative": 1, "unrated": 1}


def test_the_summary_links_back_to_the_traces(first, traffic):
    uri, exp, *_ = traffic
    proj, ids, summary = first
    link = f"{uri}/#/experiments/{exp.experiment_id}/traces?selectedEvaluationId={ids['good']}"
    assert summary["sources"]["mlflow"]["links"][0] == link
    assert link in report(summary) and "4 positive, 1 not positive, 1 unrated (83% rated)" in report(summary)
    assert json.loads((proj / "metrics" / "capture.json").read_text())["sources"]["mlflow"]["kept"] == 2
    # the report page, rendered from the capture.json the run wrote: rating coverage and the link to the trace
    from html import escape

    from llamaduo.reporting import html_report, page_data

    page = html_report.render(page_data.load(proj / "metrics", proj / "data"))
    assert f'<a href="{escape(link)}">' in page and "5 of 6 (83%); 4 positive" in page


def test_the_sentinel_email_is_written_nowhere(first):
    proj, ids, summary = first
    assert summary["pii"]["email"] == 2  # the prompt and the answer that echoes it
    for p in proj.rglob("*"):
        if p.is_file():
            assert SENTINEL_MAIL not in p.read_text(errors="replace"), p


def test_the_prepare_stage_splits_the_captured_rows_with_the_hand_made_ones(first, tmp_path):
    proj, ids, _ = first
    shutil.copytree(proj / "data", tmp_path / "data")
    (tmp_path / "params.yaml").write_text("data:\n  tasks: [summarize]\n  train_ratio: 0.5\n  seed: 0\n")
    res = run_stage("prepare.py", "--train-out", "train.parquet", "--test-out", "test.parquet", "--metrics-out", "m.json",
                    cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    import pyarrow.parquet as pq

    got = {r["id"]: r for name in ("train", "test") for r in pq.read_table(tmp_path / f"{name}.parquet").to_pylist()}
    assert len(got) == 6 and got[f"mlflow:{ids['good']}"]["system"] == SYSTEM
    assert len(got[f"mlflow:{ids['good']}"]["history"]) == 2


def test_a_second_capture_after_more_traffic_adds_only_the_new_rows(first, traffic, tmp_path):
    uri, _, send, _ = traffic
    proj, ids, _ = first
    shutil.copytree(proj / "data", tmp_path / "data")
    path = tmp_path / "data" / "coverage" / "summarize" / "mlflow.jsonl"
    before = path.read_bytes()
    new = [send("Ticket 7: the export drops a column.", rating=True), send("Ticket 8: I was logged out.", rating=False),
           send("Ticket 9: the search misses recent orders.", rating=True)]
    summary = capture(_params(tmp_path / "data" / "coverage", uri), summary_out=None)
    after = path.read_bytes()
    assert after.startswith(before) and [json.loads(s)["source_id"] for s in after[len(before):].splitlines()] == [new[0], new[2]]
    assert summary["sources"]["mlflow"]["already_captured"] == 2 and summary["sources"]["mlflow"]["kept"] == 2


def test_bad_traces_are_errors_naming_the_trace_and_nothing_is_lost(traffic, tmp_path):
    import mlflow

    uri, _, _, _ = traffic
    mlflow.set_experiment("broken")
    with mlflow.start_span(name="chat", span_type="CHAT_MODEL") as span:  # a chat span that never got its answer
        span.set_inputs({"messages": [{"role": "user", "content": "Ticket: hello?"}]})
        mlflow.update_current_trace(tags={"task": "summarize"})
    no_answer = mlflow.get_last_active_trace_id()
    mlflow.log_feedback(trace_id=no_answer, name="user_rating", value=True)
    write_jsonl(tmp_path / "summarize" / "mlflow.jsonl", [{"id": "mlflow:old", "prompt": "p", "response": "r",
                                                          "source": "mlflow", "source_id": "old"}])
    before = (tmp_path / "summarize" / "mlflow.jsonl").read_bytes()
    with pytest.raises(CaptureError, match=rf"MLflow trace {no_answer}: the call has no answer recorded"):
        capture(_params(tmp_path, uri, "broken"), summary_out=None)

    mlflow.set_experiment("embeddings")
    with mlflow.start_span(name="embed", span_type="EMBEDDING") as span:
        span.set_inputs({"input": ["a ticket"]})
        mlflow.update_current_trace(tags={"task": "summarize"})
    embed = mlflow.get_last_active_trace_id()
    mlflow.log_feedback(trace_id=embed, name="user_rating", value=True)
    with pytest.raises(CaptureError, match=rf"MLflow trace {embed}: a 'embedding' call, not a chat call"):
        capture(_params(tmp_path, uri, "embeddings"), summary_out=None)
    assert capture(_params(tmp_path, uri, "embeddings", skip_non_chat=True), summary_out=None)["sources"]["mlflow"][
        "dropped"] == {"not_chat": 1}

    from fakes.mlflow_server import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(CaptureError, match=rf"cannot reach the MLflow tracking server at {dead}"):
        capture(_params(tmp_path, dead), summary_out=None)
    with pytest.raises(CaptureError, match=r"no experiment named 'nope'"):
        capture(_params(tmp_path, uri, "nope"), summary_out=None)
    assert (tmp_path / "summarize" / "mlflow.jsonl").read_bytes() == before


def test_an_anthropic_shaped_chat_span_gives_its_system_prompt_and_answer(traffic, tmp_path):
    import mlflow

    uri, *_ = traffic
    mlflow.set_experiment("anthropic")
    with mlflow.start_span(name="Messages.create", span_type="CHAT_MODEL") as span:  # as mlflow.anthropic.autolog() records it
        span.set_inputs({"model": "claude-3-5-haiku-latest", "system": SYSTEM, "max_tokens": 200,
                         "messages": [{"role": "user", "content": [{"type": "text", "text": "Ticket 1: refund please."}]}]})
        span.set_outputs({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
                          "content": [{"type": "text", "text": "The customer wants a refund."}], "stop_reason": "end_turn",
                          "usage": {"input_tokens": 20, "output_tokens": 7}})
        mlflow.update_current_trace(tags={"task": "summarize"})
    tid = mlflow.get_last_active_trace_id()
    mlflow.log_feedback(trace_id=tid, name="user_rating", value=True)
    summary = capture(_params(tmp_path, uri, "anthropic", models=["claude-3-5-haiku"]), summary_out=None)
    assert summary["sources"]["mlflow"]["kept"] == 1
    assert _rows(tmp_path / "summarize" / "mlflow.jsonl")[0]["messages"] == [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": "Ticket 1: refund please."},
        {"role": "assistant", "content": "The customer wants a refund."}]


TINY_RUN = {
    "data": {"tasks": ["summarize"], "train_ratio": 0.75, "seed": 0},
    # one optimizer step on the captured train rows alone (no validation slice: every row is trained on)
    "train": {"quantize": False, "max_steps": 1, "batch_size": 1, "max_length": 128, "val_ratio": 0, "threads": 1,
              "cpu_preload": False},
    "infer": {"engine": "transformers", "k": 1, "max_new_tokens": 4, "temperature": 0.0, "threads": 1},
    "judge": {"provider": "judge", "m": 1, "retries": 0, "bootstrap": 100},
}


def _stage(name: str, **paths):
    """A stage script's `main` with the project's params, in this process: each stage as a subprocess would pay
    torch's and the SDKs' imports again, five times."""
    import importlib.util

    from llamaduo.config import load_params

    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(load_params("params.yaml"), **paths)


@pytest.fixture(scope="module")
def trained(traffic, tmp_path_factory, base_model_dir):
    """Rated traces captured into a project with no other coverage data, then the pipeline's stage scripts on it,
    with dvc.yaml's inputs and outputs: prepare, train, infer, and the service's baseline and the judge on a loopback
    fake."""
    import mlflow
    import yaml

    from fakes.judge_server import JudgeFake, fixed_answers
    from llamaduo.coverage.prepare import side_score

    uri, _, send, _ = traffic
    mlflow.set_experiment("trained-bot")
    sides = {"train": [], "test": []}
    subjects = ["the invoice", "the login page", "the export", "the search", "the parcel", "the refund", "the app",
                "the password mail", "the dark mode", "the receipt", "the coupon", "the address form", "the calendar",
                "the chat widget", "the newsletter", "the upload button", "the gift card", "the tracking link",
                "the profile photo", "the two-factor code", "the wishlist", "the printer driver", "the map view",
                "the voice assistant", "the checkout total", "the loyalty points", "the invite email", "the sync",
                "the spreadsheet import", "the video player", "the subscription renewal", "the font size",
                "the language switch", "the order history", "the delivery slot", "the account deletion",
                "the notification sound", "the backup", "the return label", "the currency converter"]
    # the side is a hash of the (random) trace id, a quarter of them test: send until both sides have rows (two test
    # prompts at least); 40 subjects leave fewer than two test prompts in about 1 run in 7,000, where the split would move
    # a train row over and the sides below would not be the hash's
    for i, subject in enumerate(subjects):
        tid = send(f"Ticket {100 + i}: {subject} is broken since Monday.", rating=True)
        sides["train" if side_score(f"mlflow:{tid}", 0) < 0.75 else "test"].append(tid)
        if len(sides["train"]) >= 3 and len(sides["test"]) >= 2:
            break
    send("Ticket 199: nothing works.", rating=False)
    proj = tmp_path_factory.mktemp("run")
    summary = capture(_params(proj / "data" / "coverage", uri, "trained-bot"), summary_out=proj / "metrics" / "capture.json")
    mlflow.set_experiment("support-bot")
    shutil.copytree(ROOT / "prompts", proj / "prompts")
    tables.write(proj / "curated.parquet", "synthetic", [])  # no synthetic rows: the captured ones alone
    base = str(base_model_dir)
    with JudgeFake(answer=fixed_answers("Summary: the customer has a problem.")) as judge:
        params = {**TINY_RUN, "data": {**TINY_RUN["data"], "coverage_dir": "data/coverage"},
                  "cache": {"path": str(proj / "calls.sqlite")}, "synth": {"provider": "judge"},
                  "providers": {"judge": {"kind": "openai_compatible", "model": "fake-judge", "base_url": judge.base_url,
                                          "max_retries": 0}}}
        (proj / "params.yaml").write_text(yaml.safe_dump(params))
        cwd = os.getcwd()
        os.chdir(proj)  # the stages read params.yaml and prompts/ from the project folder, as under DVC
        try:
            _stage("prepare", train_out="train.parquet", test_out="test.parquet", metrics_out="prepare.json")
            _stage("train", train_rows="train.parquet", curated="curated.parquet", base=base, out="adapter",
                   metrics_out="train.json", loss_out="loss.json")
            _stage("infer", test="test.parquet", base=base, adapter="adapter", merged="merged", out="responses.parquet",
                   metrics_out="infer.json")
            _stage("baseline", test="test.parquet", responses_out="b_resp.parquet", judgments_out="b_judg.parquet",
                   metrics_out="baseline.json")
            _stage("judge", responses="responses.parquet", test="test.parquet", baseline_responses="b_resp.parquet",
                   baseline_judgments="b_judg.parquet", out="judgments.parquet", pairwise_out="pairwise.parquet",
                   metrics_out="eval.json", worst_out="worst.json", reference_out="reference.parquet")
        finally:
            os.chdir(cwd)
    return proj, sides, summary


@pytest.mark.slow
def test_the_pipeline_trains_on_the_captured_rows_and_answers_their_test_prompts(trained):
    proj, sides, summary = trained
    assert summary["sources"]["mlflow"]["kept"] == len(sides["train"]) + len(sides["test"])
    assert summary["sources"]["mlflow"]["dropped"] == {"not_positive": 1}
    train = tables.read(proj / "train.parquet", "split")
    test = tables.read(proj / "test.parquet", "split")
    # each captured trace on the side its id hashes to, and nothing else: the coverage data is the capture alone
    assert sorted(r["id"] for r in train) == sorted(f"mlflow:{t}" for t in sides["train"])
    assert sorted(r["id"] for r in test) == sorted(f"mlflow:{t}" for t in sides["test"])
    assert all(r["system"] == SYSTEM for r in train + test)
    tm = json.loads((proj / "train.json").read_text())
    assert tm["rows_available"] == len(sides["train"]) and tm["steps"] == 1 and tm["val_rows"] == 0
    assert (proj / "adapter" / "adapter_model.safetensors").is_file()
    answers = tables.read(proj / "responses.parquet", "responses")
    assert sorted(a["prompt_id"] for a in answers) == sorted(f"mlflow:{t}" for t in sides["test"])  # k = 1
    assert all(0 < a["tokens"] <= 4 and a["engine"] == "transformers" for a in answers)
    ev = json.loads((proj / "eval.json").read_text())
    assert ev["answers"] == len(sides["test"]) and ev["judgments"] == len(sides["test"]) and ev["failed_judgments"] == 0
    assert ev["precision"]["mean"] == 60.0
