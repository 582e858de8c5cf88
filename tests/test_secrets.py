"""The API key is read from the environment and written nowhere: run real stage scripts against a fake
service with a sentinel key, including a failing run whose server echoes the key back, then scan every file
the stages wrote (params, Parquet, metrics, the cache DB with its WAL) and everything they printed."""

import json
import shutil
from pathlib import Path

from conftest import ROOT, no_robots_row, run_stage
from fakes.openai_server import FakeOpenAI
from llamaduo import tables

SENTINEL = "llamaduo-test-sentinel-2b7e151628aed2a6abf7158809cf4f3c"  # plainly not a vendor key


class EchoingOpenAI(FakeOpenAI):
    """Answers synthesis and judge requests; its errors quote the Authorization header, as some servers do."""

    def error_body(self, code):
        last = {k.lower(): v for k, v in self.seen_headers[-1].items()} if self.seen_headers else {}
        auth = last.get("authorization", "")
        return {"error": {"message": f"Incorrect API key provided: {auth}", "type": "invalid_request_error"}}


def service(req, k):
    if req["response_format"]["json_schema"]["name"] == "pairs":
        return json.dumps({"pairs": [{"instruction": f"Summarize note {k}: the bus is late.", "response": "Bus late."}]})
    return json.dumps({"reason": "fine", "similarity": 70, "precision": 80})


def project(tmp_path: Path, base_url: str) -> Path:
    shutil.copytree(ROOT / "prompts", tmp_path / "prompts")
    (tmp_path / "params.yaml").write_text(f"""
providers:
  service: {{kind: local, model: m}}
  svc: {{kind: openai, model: gpt-test, base_url: "{base_url}", max_retries: 1, retry_base_s: 0.01,
         price: {{input_per_mtok: 2.5, output_per_mtok: 10}}}}
synth: {{provider: svc, volume: 2, pairs_per_request: 1, max_requests: 3}}
judge: {{provider: svc, m: 2}}
""")
    rows = [{"id": f"summarize-{i}", "task": "summarize", "instruction": r["messages"][0]["content"],
             "response": r["messages"][1]["content"], "category": "Summarize", "split": "test"}
            for i, r in enumerate(no_robots_row(i) for i in range(3))]
    tables.write(tmp_path / "test.parquet", "split", rows)
    tables.write(tmp_path / "responses.parquet", "responses",
                 [{"prompt_id": r["id"], "task": "summarize", "sample": 0, "answer": "A fox.", "tokens": 2,
                   "finish_reason": "stop", "engine": "x"} for r in rows])
    return tmp_path


def test_no_artifact_or_log_holds_the_api_key(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    printed = []
    with EchoingOpenAI(answer=service) as fake:
        proj = project(tmp_path / "proj", fake.base_url)
        for script, args in [("synthesize.py", ["--train", "test.parquet", "--test", "test.parquet", "--out", "raw.parquet",
                                                "--metrics-out", "synth.json"]),
                             ("judge.py", ["--responses", "responses.parquet", "--test", "test.parquet",
                                           "--out", "judgments.parquet", "--metrics-out", "eval.json"])]:
            res = run_stage(script, *args, cwd=proj)
            assert res.returncode == 0, res.stderr[-3000:]
            printed += [res.stdout, res.stderr]
        # a failing run: the server rejects the key and quotes it back
        fake.faults = [("status", 401)]
        (proj / "params.yaml").write_text((proj / "params.yaml").read_text().replace("m: 2", "m: 3"))
        res = run_stage("judge.py", "--responses", "responses.parquet", "--test", "test.parquet",
                        "--out", "j2.parquet", "--metrics-out", "e2.json", cwd=proj)
        assert res.returncode == 2 and "HTTP 401" in res.stderr and "Incorrect API key provided: Bearer ***" in res.stderr
        printed += [res.stdout, res.stderr]

    # the key was really in use (so this scan could find it)...
    assert any(SENTINEL in json.dumps(h) for h in fake.seen_headers)
    usage = json.loads((proj / "eval.json").read_text())["usage"]
    assert usage["calls"] == 3 and usage["cost_usd"] > 0
    # ...and is nowhere in what the stages wrote or printed
    files = [f for f in proj.rglob("*") if f.is_file()]
    assert {f.name for f in files} >= {"params.yaml", "raw.parquet", "synth.json", "judgments.parquet", "eval.json",
                                       "calls.sqlite"}
    for f in files:
        data = f.read_bytes()
        assert SENTINEL.encode() not in data and SENTINEL[-32:].encode() not in data, f
    for text in printed:
        assert SENTINEL not in text and SENTINEL[-32:] not in text
