"""stages/baseline.py and stages/judge.py run as DVC runs them, against a loopback judge (OpenAI wire format)
that returns malformed, out-of-range and refused judgments: each is re-asked, then counted with its reason,
and never averaged."""

import json
import shutil

import yaml

from conftest import ROOT, run_baseline_and_judge, run_stage
from fakes.judge_server import JudgeFake
from llamaduo import tables

TEST = [{"id": f"p{i}", "task": "summarize", "instruction": f"Summarize note {i}.", "response": f"Note {i}.",
         "category": "Summarize", "split": "test"} for i in range(3)]
# the local model's answers: the fake judge reacts to their words
LOCAL = {("p0", 0): "fine answer", ("p0", 1): "MALFORMED answer", ("p1", 0): "RANGE answer",
         ("p1", 1): "REFUSE answer", ("p2", 0): "fine answer", ("p2", 1): "fine answer"}


def service(body, k):
    schema = (body.get("response_format") or {}).get("json_schema", {}).get("name")
    prompt = body["messages"][-1]["content"]
    if schema is None:  # the baseline: the service answers the test prompt
        return f"Service summary of {prompt}"
    if schema == "verdict":  # always the first position: every preference flips with the order
        return json.dumps({"reason": "A reads better", "winner": "A"})
    answer = prompt.split("Model answer:")[1]
    if "MALFORMED" in answer:
        return '{"reason": "cut'
    if "RANGE" in answer:
        return json.dumps({"reason": "r", "similarity": 150, "precision": 90})
    if "Service summary" in answer:
        return json.dumps({"reason": "close to the reference", "similarity": 60, "precision": 80})
    return json.dumps({"reason": "misses the point", "similarity": 30, "precision": 40})


def project(tmp_path, base_url):
    proj = tmp_path / "proj"
    shutil.copytree(ROOT / "prompts", proj / "prompts")
    params = {
        "providers": {"fake": {"kind": "openai_compatible", "model": "fake-judge", "base_url": base_url,
                               "concurrency": 4, "max_retries": 0}},
        "synth": {"provider": "fake"},
        "cache": {"path": str(tmp_path / "calls.sqlite")},
        # rounds 1: every answer judged (these tests count each judgment; tests/judging/test_sequential.py the rounds)
        "judge": {"provider": "fake", "m": 2, "retries": 1, "bootstrap": 100, "temperature": 0.5, "rounds": 1},
    }
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    tables.write(proj / "test.parquet", "split", TEST)
    tables.write(proj / "responses.parquet", "responses", [
        {"prompt_id": p, "task": "summarize", "sample": s, "answer": a, "tokens": 3, "finish_reason": "stop",
         "engine": "x", "latency_s": 0.1} for (p, s), a in LOCAL.items()])
    return proj


def test_baseline_and_judge_count_failures_and_never_average_them(tmp_path):
    with JudgeFake(answer=service, refuse_marker="REFUSE") as fake:
        proj = project(tmp_path, fake.base_url)
        run_baseline_and_judge(proj)
        paid = len(fake.requests)
        run_baseline_and_judge(proj)  # a rerun is answered by the call cache
        assert len(fake.requests) == paid

    baseline = json.loads((proj / "baseline.json").read_text())
    svc = baseline["services"]["fake"]
    assert svc["answers"] == 3 and svc["by_judge"]["fake"]["precision"]["mean"] == 80.0

    ev = json.loads((proj / "eval.json").read_text())
    # usable: p0/0, p2/0, p2/1 at 40 each; the malformed, out-of-range and refused answers are counted, not scored
    assert ev["precision"]["scored_answers"] == 3 and ev["precision"]["mean"] == 40.0
    assert ev["similarity"]["mean"] == 30.0 and ev["precision"]["coverage_50"] == 0.0
    assert ev["failed_judgments"] == 6
    assert ev["failure_reasons"] == {"`similarity` outside 0-100": 2, "not JSON": 2, "refused": 2}
    assert ev["scored_fraction"] == 0.5  # 6 of 12 judgments
    assert ev["retried_judgments"] == 6 and ev["recovered_by_retry"] == 0
    assert ev["p_match"]["precision"]["mean"] == 0.5 and ev["p_match"]["similarity"]["mean"] == 0.5
    # the judge always picks position A: every judged comparison flips, so every one is a tie
    pw = ev["pairwise"]
    assert (pw["comparisons"], pw["judged"], pw["failed"]) == (6, 5, 1)
    assert (pw["wins"], pw["ties"], pw["losses"], pw["flipped"]) == (0, 5, 0, 5)
    assert ev["usage"]["calls"] == 0 and ev["usage"]["cached"] > 0 and "by_task" in ev  # the rerun paid nothing

    rows = tables.read(proj / "judgments.parquet", "judgments")
    assert len(rows) == 12 and all(r["judge_model"] == "fake-judge" and fake.base_url in r["judge_version"] for r in rows)
    assert {r["served_model"] for r in rows} == {"fake-judge-2026-01-15"} and ev["served_models"] == ["fake-judge-2026-01-15"]
    assert {r["served_model"] for r in tables.read(proj / "b_resp.parquet", "baseline_responses")} == {"fake-judge-2026-01-15"}
    assert {r["served_model"] for r in tables.read(proj / "pairwise.parquet", "pairwise")} == {"fake-judge-2026-01-15"}
    assert all(r["temperature"] == 0.5 and r["m"] == 2 and len(r["prompt_sha"]) == 12 for r in rows)
    failed = [r for r in rows if not r["ok"]]
    assert all(r["precision"] is None and r["attempts"] == 2 and r["error"] for r in failed)
    assert {r["reason"] for r in rows if r["ok"]} == {"misses the point"}

    worst = json.loads((proj / "worst.json").read_text())
    assert worst[0]["reasons"] == ["misses the point", "misses the point"] and worst[0]["precision"] == 40.0

    # no judge: every local and service answer against the reference ("Note i."). "Service summary of Summarize
    # note i." shares its LCS "note i" (2 of 6 tokens, all 2 of the reference's): ROUGE-L F1 = 2 * 1/3 * 1 / (4/3) = 50
    ref = tables.read(proj / "reference.parquet", "reference")
    assert [r["answerer"] for r in ref] == ["local"] * 6 + ["fake"] * 3
    assert {r["rouge_l"] for r in ref if r["answerer"] == "fake"} == {50.0}
    r = ev["reference"]
    assert r["rouge_l"]["mean"] == 0.0 and r["services"]["fake"]["rouge_l"]["mean"] == 50.0 and r["p_match"]["rouge_l"]["mean"] == 0.0
    # the judge gives every usable local answer 40 (constant: no correlation), the service's 80: over all answers it
    # ranks them as ROUGE-L does
    assert r["judge_agreement"]["local"]["precision"]["spearman"]["rouge_l"] is None
    assert r["judge_agreement"]["all"]["precision"] == {"answers": 6, "spearman": {"rouge_l": 1.0, "chrf": 1.0, "exact_match": None}}


def test_judge_runs_without_a_baseline(tmp_path):
    with JudgeFake(answer=service, refuse_marker="REFUSE") as fake:
        proj = project(tmp_path, fake.base_url)
        res = run_stage("judge.py", "--responses", "responses.parquet", "--test", "test.parquet",
                        "--out", "judgments.parquet", "--metrics-out", "eval.json", cwd=proj)
        assert res.returncode == 0, res.stderr[-3000:]
        assert not any((b.get("response_format") or {}).get("json_schema", {}).get("name") == "verdict"
                       for b in fake.requests)
    ev = json.loads((proj / "eval.json").read_text())
    assert ev["precision"]["mean"] == 40.0 and "p_match" not in ev and "pairwise" not in ev


def test_a_panel_of_two_judges_reports_each_and_their_agreement(tmp_path):
    with JudgeFake(answer=service, refuse_marker="REFUSE") as fake:
        proj = project(tmp_path, fake.base_url)
        params = yaml.safe_load((proj / "params.yaml").read_text())
        params["providers"]["fake2"] = dict(params["providers"]["fake"], model="fake-judge-2")
        params["judge"] = dict(params["judge"], judges=["fake", "fake2"])
        del params["judge"]["provider"]
        (proj / "params.yaml").write_text(yaml.safe_dump(params))
        run_baseline_and_judge(proj)
    ev = json.loads((proj / "eval.json").read_text())
    assert ev["judge"] == "fake" and ev["judges"] == ["fake", "fake2"]
    assert set(ev["per_judge"]) == {"fake", "fake2"} and ev["per_judge"]["fake2"]["precision"]["mean"] == 40.0
    assert ev["panel"]["precision"]["mean"] == 40.0
    # both judges give every usable answer 40: a constant, so the correlations are undefined, not 1 or 0
    assert ev["panel"]["agreement"]["precision"]["pairs"]["fake~fake2"] == {"answers": 3, "pearson": None, "spearman": None}
    rows = tables.read(proj / "judgments.parquet", "judgments")
    assert {(r["judge"], r["primary"], r["judge_model"]) for r in rows} == {("fake", True, "fake-judge"),
                                                                          ("fake2", False, "fake-judge-2")}
    assert json.loads((proj / "baseline.json").read_text())["services"]["fake"]["by_judge"]["fake2"]["precision"]["mean"] == 80.0


# ---- faults a judge run must survive: odd reasons, a broken schema, a 400 --------------------------------------

ODD_REASON = 'It\'s "close", but `eval()` isn\'t the reference\'s; see {"precision": 100} -- ```json```'
FAULTY = {("p0", 0): "fine answer", ("p1", 0): "fine answer", ("p2", 0): "NOPRECISION answer",
          ("p3", 0): "TOOLONG answer", ("p4", 0): "fine answer"}


class RejectingJudge(JudgeFake):
    """Answers 400 (as for a prompt past the judge's context) to every prompt holding TOOLONG."""

    def generate(self, handler, body):
        if "TOOLONG" in self.prompt_of(body):
            with self.lock:
                self.requests.append(body)
                self.prompts.append(self.prompt_of(body))
            return 400, {"error": {"message": "This model's maximum context length is 8192 tokens (you asked for 9000)",
                                   "type": "invalid_request_error", "code": "context_length_exceeded"}}, {}
        return super().generate(handler, body)


def faulty_judge(body, k):
    schema = (body.get("response_format") or {}).get("json_schema", {}).get("name")
    prompt = body["messages"][-1]["content"]
    if schema is None:
        return f"Service summary of {prompt}"
    if schema == "verdict":
        return json.dumps({"reason": ODD_REASON, "winner": "B"})
    if "NOPRECISION" in prompt.split("Model answer:")[1]:
        return json.dumps({"reason": "no precision given", "similarity": 50})  # re-asked, the same again
    return json.dumps({"reason": ODD_REASON, "similarity": 70, "precision": 80})


def test_odd_reasons_a_broken_schema_and_a_400_become_counted_rows_and_the_gate_refuses(tmp_path):
    from llamaduo.config import GateParams
    from llamaduo.reporting.summary import summary

    test = [dict(TEST[0], id=f"p{i}", instruction=f"Summarize note {i}.", response=f"Note {i}.") for i in range(5)]
    with RejectingJudge(answer=faulty_judge) as fake:
        proj = project(tmp_path, fake.base_url)
        tables.write(proj / "test.parquet", "split", test)
        tables.write(proj / "responses.parquet", "responses", [
            {"prompt_id": p, "task": "summarize", "sample": s, "answer": a, "tokens": 3, "finish_reason": "stop",
             "engine": "x", "latency_s": 0.1} for (p, s), a in FAULTY.items()])
        run_baseline_and_judge(proj)  # finishes: neither the 400 nor the bad judgments stop the stage
        rejected = sum("TOOLONG" in p for p in fake.prompts)
    # the 400 prompt was sent once per request (grade, both pairwise orders) and never re-asked: no re-ask fixes it
    assert rejected == 3

    rows = tables.read(proj / "judgments.parquet", "judgments")
    by = {(r["prompt_id"], r["repeat"]): r for r in rows}
    assert len(rows) == 10 and sum(not r["ok"] for r in rows) == 4
    for rep in (0, 1):
        missing, too_long = by[("p2", rep)], by[("p3", rep)]
        assert (missing["ok"], missing["precision"], missing["similarity"], missing["error"], missing["attempts"]) == \
            (False, None, None, "missing precision", 2)  # re-asked once (judge.retries), then a failed row
        assert not too_long["ok"] and too_long["precision"] is None and too_long["attempts"] == 1
        assert "400" in too_long["error"] and "maximum context length" in too_long["error"]
    # the judge's reason is data: stored as it came, quotes, backticks and braces included
    assert {r["reason"] for r in rows if r["ok"]} == {ODD_REASON}

    ev = json.loads((proj / "eval.json").read_text())
    assert ev["judgments"] == 10 and ev["failed_judgments"] == 4 and ev["scored_fraction"] == 0.6
    assert ev["precision"]["scored_answers"] == 3 and ev["precision"]["mean"] == 80.0
    # counted by kind: the 400 by its status, not by the vendor's text
    assert ev["failure_reasons"] == {"missing precision": 2, "request failed: HTTP 400": 2}
    pw = ev["pairwise"]
    assert (pw["comparisons"], pw["judged"], pw["failed"]) == (5, 4, 1)
    assert pw["failure_reasons"] == {"local first: request failed: HTTP 400": 1, "service first: request failed: HTTP 400": 1}
    assert {r["reason_local_first"] for r in tables.read(proj / "pairwise.parquet", "pairwise") if r["ok"]} == {ODD_REASON}

    # the gate: a mean of 80 over 60% of the judgments does not pass a threshold of 70
    files = {"prepare": {}, "curate": {"rows_out": 0}, "train": {"rows": 1, "train_loss": 1.0},
             "infer": {"tokens_per_s": 1.0}, "champion": {}}
    for name, body in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(body))
    s = summary(**{name: str(tmp_path / f"{name}.json") for name in files}, eval=str(proj / "eval.json"),
                p=GateParams(mode="point", threshold=70))
    assert s["gate"]["score"] == 80.0 and s["gate"]["scored_fraction"] == 0.6 and s["gate"]["passed"] is False
    assert s["gate"]["reason"] == "only 60% of judgments scored for `precision`, `gate.min_scored_fraction` is 0.9"
    assert summary(**{name: str(tmp_path / f"{name}.json") for name in files}, eval=str(proj / "eval.json"),
                   p=GateParams(mode="point", threshold=70, min_scored_fraction=0.5))["gate"]["passed"] is True


def test_a_prompt_the_service_rejects_has_no_baseline_answer_and_the_others_are_kept(tmp_path):
    from llamaduo.config import load_params
    from llamaduo.judging.baseline import answer_with_services
    from llamaduo.providers import open_providers
    from llamaduo.providers.cache import CallCache

    test = [dict(TEST[0], id=f"p{i}", instruction=f"Summarize note {i}{' TOOLONG' * (i == 1)}.") for i in range(3)]
    with RejectingJudge(answer=faulty_judge) as fake:
        proj = project(tmp_path, fake.base_url)
        params = load_params(proj / "params.yaml")
        with CallCache(tmp_path / "calls.sqlite") as cache, open_providers(params.providers, ["fake"]) as providers:
            rows, usage = answer_with_services(providers, test, params.judge, cache=cache)
    assert [r["prompt_id"] for r in rows] == ["p0", "p2"] and usage["fake"]["failed"] == 1 and usage["fake"]["calls"] == 2


def test_sequential_judging_stops_paying_once_the_gate_will_not_pass(tmp_path):
    """Gated on precision >= 70 with every local answer judged 40: after the first round (2 of 8 prompts, both 40, no
    spread) the predicted chance of a pass is 0, and the other 6 prompts' answers are never sent to the judge."""
    test = [{"id": f"q{i}", "task": "summarize", "instruction": f"Summarize memo {i}.", "response": f"Memo {i}.",
             "category": "Summarize", "split": "test"} for i in range(8)]
    with JudgeFake(answer=service) as fake:
        proj = project(tmp_path, fake.base_url)
        params = yaml.safe_load((proj / "params.yaml").read_text())
        params["judge"].update(rounds=4, pairwise=False, baseline={"services": []})
        params["gate"] = {"metric": "precision", "mode": "threshold", "threshold": 70}
        (proj / "params.yaml").write_text(yaml.safe_dump(params))
        tables.write(proj / "test.parquet", "split", test)
        tables.write(proj / "responses.parquet", "responses", [
            {"prompt_id": r["id"], "task": "summarize", "sample": s, "answer": f"fine answer {s}", "tokens": 3,
             "finish_reason": "stop", "engine": "x", "latency_s": 0.1} for r in test for s in range(2)])
        judge = run_stage("judge.py", "--responses", "responses.parquet", "--test", "test.parquet", "--out", "judgments.parquet",
                          "--metrics-out", "eval.json", "--reference-out", "reference.parquet", cwd=proj)
        assert judge.returncode == 0, judge.stderr[-3000:]
        asked = [r for r in fake.requests if "Model answer:" in r["messages"][-1]["content"]]
    ev = json.loads((proj / "eval.json").read_text())
    seq = ev["sequential"]
    assert (seq["active"], seq["rounds"], seq["rounds_run"], seq["prompts_judged"]) == (True, 4, 1, 2)
    # 2 prompts x 2 answers, one call each with n=M=2: 4 calls, 8 judgments of a full pass's 32
    assert len(asked) == 4 and ev["usage"]["calls"] == 4
    assert (seq["judgments_paid"], seq["judgments_full"], seq["saving"]) == (8, 32, 0.75)
    assert seq["stopped"].startswith("round 1 of 4: the gate will not pass (the chance that the rest of the prompts "
                                     "let it pass is 0,")
    judged = {j["prompt_id"] for j in tables.read(proj / "judgments.parquet", "judgments")}
    assert len(judged) == 2 and judged < {r["id"] for r in test} and ev["precision"]["mean"] == 40.0
    # the reference metrics cost nothing: every answer has them
    assert len(tables.read(proj / "reference.parquet", "reference")) == 16
