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
        "judge": {"provider": "fake", "m": 2, "retries": 1, "bootstrap": 100, "temperature": 0.5},
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
    assert ev["failure_reasons"] == {"`similarity` 150 outside 0-100": 2, "not JSON": 2, "refused": 2}
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
