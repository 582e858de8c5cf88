"""The API key is read from the environment and written nowhere: run real stage scripts against a fake
service with a sentinel key, including a failing run whose server echoes the key back, then scan every file
the stages wrote (params, Parquet, metrics, the cache DB with its WAL) and everything they printed. And every
other URL the project stores, prints or logs follows one rule (llamaduo.urls): no credential written in params
or .dvc/config, none in what MLflow prints or records."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, no_robots_row, run_stage
from fakes.openai_server import FakeOpenAI
from llamaduo import cli, tables
from llamaduo.config import load_params
from llamaduo.errors import ParamsError

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


# -- the clouds: credentials from each cloud's own environment or credential chain, written nowhere either

CLOUD_SENTINELS = {
    "AZURE_OPENAI_API_KEY": "llamaduo-azure-sentinel-6bc1f0a2d9e84c3b",
    "AWS_SECRET_ACCESS_KEY": "llamaduo-aws-secret-sentinel-91d2c7e0b3f5",
    "AWS_SESSION_TOKEN": "llamaduo-aws-session-sentinel-4e8a1c6d2b70",
}
TOKEN_SENTINEL = "llamaduo-vertex-token-sentinel-c03f9b1e"  # the access tokens the Vertex fake issues start with this
BEDROCK_MODEL = "anthropic.claude-sonnet-4-5-20250929-v1:0"


def echoing(cls):
    """A fake whose error messages quote the request's credential headers back, as some gateways do."""

    class Echoing(cls):
        def error_body(self, code):
            last = {k.lower(): v for k, v in self.seen_headers[-1].items()} if self.seen_headers else {}
            quoted = ", ".join(f"{h}: {last[h]}" for h in ("api-key", "authorization", "x-amz-security-token") if h in last)
            return {"error": {"type": "authentication_error", "message": f"credentials rejected ({quoted})"},
                    "message": f"credentials rejected ({quoted})"}

    return Echoing


def judge_only(req, k):
    return json.dumps({"reason": "fine", "similarity": 70, "precision": 80})


def cloud_project(tmp_path: Path, az, br, vx) -> Path:
    proj = project(tmp_path / "proj", "http://unused")
    (proj / "params.yaml").write_text(f"""
providers:
  service: {{kind: local, model: m}}
  azure: {{kind: openai, cloud: azure, model: gpt-4o-deploy, base_url: "{az.base_url}", max_retries: 0}}
  bedrock: {{kind: anthropic, cloud: bedrock, region: us-east-1, model: "{BEDROCK_MODEL}", base_url: "{br.base_url}",
             max_retries: 0}}
  vertex: {{kind: anthropic, cloud: vertex, project: fake-project, region: us-east5, model: "claude-sonnet-4-5@20250929",
            base_url: "{vx.base_url}", max_retries: 0}}
judge: {{judges: [azure, bedrock, vertex], m: 2, pairwise: false}}
""")
    return proj


def test_no_artifact_or_log_holds_a_cloud_credential(tmp_path, monkeypatch):
    from fakes.azure_openai_server import FakeAzureOpenAI
    from fakes.bedrock_server import FakeBedrock
    from fakes.vertex_server import FakeVertexClaude

    for k, v in CLOUD_SENTINELS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDLLAMADUOTEST")
    for k in ("AWS_PROFILE", "AWS_REGION", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "CLOUD_ML_REGION", "ANTHROPIC_VERTEX_PROJECT_ID"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    printed = []
    with (echoing(FakeAzureOpenAI)(answer=judge_only) as az,
          echoing(FakeBedrock)(answer=judge_only, access_key="AKIDLLAMADUOTEST", secret_key=CLOUD_SENTINELS["AWS_SECRET_ACCESS_KEY"],
                               session_token=CLOUD_SENTINELS["AWS_SESSION_TOKEN"]) as br,
          echoing(FakeVertexClaude)(answer=judge_only) as vx):
        vx.token_prefix = TOKEN_SENTINEL
        key_file = vx.key_file(tmp_path)  # outside the project: the key file is the user's, not an artifact
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        private_key = json.loads(key_file.read_text())["private_key"].splitlines()[5]  # a line of the key's body
        proj = cloud_project(tmp_path, az, br, vx)
        args = ["--responses", "responses.parquet", "--test", "test.parquet"]
        res = run_stage("judge.py", *args, "--out", "judgments.parquet", "--metrics-out", "eval.json", cwd=proj)
        assert res.returncode == 0, res.stderr[-3000:]
        printed += [res.stdout, res.stderr]
        # failing runs: each cloud rejects the credentials and quotes them back
        for fake, judges, blanked in ((az, "[azure]", "api-key: ***"), (br, "[bedrock]", "x-amz-security-token: ***"),
                                      (vx, "[vertex]", "authorization: Bearer ***")):
            fake.faults = [("status", 401)]
            (proj / "params.yaml").write_text((proj / "params.yaml").read_text().replace("m: 2", "m: 3").replace(
                "judges: [azure, bedrock, vertex]", f"judges: {judges}"))
            res = run_stage("judge.py", *args, "--out", "j2.parquet", "--metrics-out", "e2.json", cwd=proj)
            assert res.returncode == 2 and "HTTP 401" in res.stderr and "credentials rejected" in res.stderr, res.stderr[-3000:]
            assert blanked in res.stderr, res.stderr[-3000:]  # quoted back, and blanked
            printed += [res.stdout, res.stderr]
            (proj / "params.yaml").write_text((proj / "params.yaml").read_text().replace("m: 3", "m: 2").replace(
                f"judges: {judges}", "judges: [azure, bedrock, vertex]"))

    # the credentials were really in use, and echoed (so this scan could find them)...
    sent = json.dumps(az.seen_headers + br.seen_headers + vx.seen_headers)
    assert CLOUD_SENTINELS["AZURE_OPENAI_API_KEY"] in sent and CLOUD_SENTINELS["AWS_SESSION_TOKEN"] in sent and TOKEN_SENTINEL in sent
    assert br.bad_signatures == 0 and vx.unauthorized == 0
    per_judge = json.loads((proj / "eval.json").read_text())["per_judge"]
    assert {j: e["usage"]["calls"] for j, e in per_judge.items()} == {"azure": 3, "bedrock": 6, "vertex": 6}
    assert per_judge["bedrock"]["served_models"] == [f"{BEDROCK_MODEL}-20260115"]
    # ...and none is in what the stage wrote or printed
    files = [f for f in proj.rglob("*") if f.is_file()]
    assert {f.name for f in files} >= {"params.yaml", "judgments.parquet", "eval.json", "calls.sqlite"}
    secrets = [*CLOUD_SENTINELS.values(), TOKEN_SENTINEL, private_key]
    for f in files:
        data = f.read_bytes()
        for s in secrets:
            assert s.encode() not in data, (f, s)
    for text in printed:
        for s in secrets:
            assert s not in text, s


# -- every other URL the project stores, prints or logs: params' mlflow.tracking_uri, cluster.address and
# cluster.storage, `llamaduo init --remote`, and the MLFLOW_TRACKING_URI environment variable

URL_SENTINEL = "llamaduo-url-sentinel-7c1e94b2d05a"
PARAMS_URLS = {  # each key with the credential spelled the way its kind of URL carries one
    "mlflow.tracking_uri": f"https://bob:{URL_SENTINEL}@mlflow.example",
    "cluster.address": f"ray://bob:{URL_SENTINEL}@head.example:10001",
    "cluster.storage": f"abfs://container/scratch?sv=2024-11-04&sig={URL_SENTINEL}",  # an Azure SAS
}


def params_with(urls: dict[str, str]) -> str:
    sections: dict = {}
    for key, url in urls.items():
        section, field = key.split(".")
        sections.setdefault(section, {})[field] = url
    if "address" in sections.get("cluster", {}):
        sections["cluster"]["engine"] = "ray"
    return yaml.safe_dump(sections)


def test_no_url_in_params_holds_a_credential(tmp_path):
    """params.yaml is committed every cycle and flattened into MLflow params: a stage refuses it before doing
    anything, names each key, and quotes no credential back."""
    (tmp_path / "params.yaml").write_text(params_with(PARAMS_URLS))
    res = run_stage("prepare.py", "--train-out", "train.parquet", "--test-out", "test.parquet", "--metrics-out", "m.json",
                    cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    for key in PARAMS_URLS:
        assert f"`{key}` carries a credential" in res.stderr, res.stderr
    assert URL_SENTINEL not in res.stdout + res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("key,url,refused", [
    # used as written: a `${VAR}` there would be sent as those characters, so it is refused as well
    ("mlflow.tracking_uri", "https://bob:${MLFLOW_PW}@mlflow.example", True),
    ("mlflow.tracking_uri", "https://${MLFLOW_TOKEN}@mlflow.example", True),  # a token as the user name
    ("cluster.storage", "s3://AKIDEXAMPLE:${S3_SECRET}@bucket/scratch", True),
    ("cluster.storage", "gs://bucket/scratch?access_token=ya29.x", True),
    # a user name alone is a login or a place, not a secret, outside http(s)
    ("mlflow.tracking_uri", "postgresql://mlflow@db.example:5432/mlflow", False),
    ("cluster.storage", "abfs://container@account.dfs.core.windows.net/scratch", False),
    ("cluster.address", "10.0.0.5:6379", False),
    ("mlflow.tracking_uri", "https://mlflow.example/?workspace=team", False),
])
def test_credential_positions_in_params_urls(tmp_path, key, url, refused):
    f = tmp_path / "params.yaml"
    f.write_text(params_with({key: url}))
    if refused:
        with pytest.raises(ParamsError, match=f"`{key}` carries a credential"):
            load_params(f)
    else:
        assert load_params(f) is not None


@pytest.fixture
def git_identity(monkeypatch):
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "test")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "test@example.invalid")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")


def test_init_remote_takes_no_credential_and_the_local_config_keeps_one(tmp_path, capsys, git_identity):
    """`llamaduo init --remote` writes .dvc/config, commits it and prints the URL: a credential in it is refused
    before anything is written; the way the error gives (`dvc remote modify --local`) keeps it out of git."""
    for url in (f"https://bob:{URL_SENTINEL}@dvc.example/store", f"https://{URL_SENTINEL}@dvc.example/store",
                f"webdavs://dav.example/store?token={URL_SENTINEL}"):
        demo = tmp_path / "refused"
        assert cli.main(["init", str(demo), "--remote", url]) == 2
        out, err = capsys.readouterr()
        assert "`--remote` carries a credential" in err and "dvc remote modify --local" in err, err
        assert URL_SENTINEL not in out + err
        assert not demo.exists()

    demo = tmp_path / "demo"
    assert cli.main(["init", str(demo), "--remote", "https://dvc.example/store"]) == 0
    res = subprocess.run([sys.executable, "-m", "dvc", "remote", "modify", "--local", "storage", "password", URL_SENTINEL],
                         cwd=demo, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert URL_SENTINEL in (demo / ".dvc" / "config.local").read_text()  # where DVC reads it from
    def git(*args):
        return subprocess.run(["git", *args], cwd=demo, capture_output=True, text=True, check=True).stdout

    assert git("status", "--porcelain", "--ignored", ".dvc/config.local").startswith("!!")  # ignored
    assert URL_SENTINEL not in git("log", "-p", "--all") and URL_SENTINEL not in (demo / ".dvc" / "config").read_text()
    assert URL_SENTINEL not in "".join(capsys.readouterr())


@pytest.fixture
def mlflow_env(monkeypatch):
    """MLflow's variables restored after the test (tracking.connect sets the credential ones)."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    yield monkeypatch
    import mlflow

    mlflow.set_tracking_uri(None)  # the next test must not talk to a server that is gone


def test_mlflow_tracking_uri_credentials_reach_no_output_or_run(tmp_path, mlflow_env, capfd):
    """MLFLOW_TRACKING_URI from the environment may carry a server's user:password: MLflow gets them through its
    own credential variables and a URL without them, so what it prints ("View run at ...") and quotes in its
    errors, and what the loop logs to the run, hold none."""
    import mlflow

    from fakes.mlflow_server import free_port, mlflow_server
    from llamaduo.config import MlflowParams
    from llamaduo.cycle import tracking
    from llamaduo.errors import UserError

    with mlflow_server(tmp_path / "server") as uri:
        with_auth = uri.replace("http://", f"http://llamaduo:{URL_SENTINEL}@")
        mlflow_env.setenv("MLFLOW_TRACKING_URI", with_auth)
        (tmp_path / "params.yaml").write_text("mlflow: {experiment: secrets}\ntrain: {seed: 1}\n")
        metrics = tmp_path / "metrics"
        metrics.mkdir()
        (metrics / "eval.json").write_text(json.dumps({"score": 61.5}))
        parent = tracking.start_parent(MlflowParams(experiment="secrets"), resume_id=None, tags={"task": "t"})
        child = tracking.log_cycle(parent_id=parent, cycle=0, params_file=str(tmp_path / "params.yaml"),
                                   metrics_dir=str(metrics), tags={})
        # the credentials were in use: MLflow sends them as basic auth, to the URL without them
        store = mlflow.tracking.MlflowClient()._tracking_client.store
        creds = store.get_host_creds()
        assert (creds.host, creds.username, creds.password) == (uri, "llamaduo", URL_SENTINEL)
        assert mlflow.get_tracking_uri() == uri
        run = mlflow.get_run(child)
        assert run.data.metrics["eval.score"] == 61.5
        logged = json.dumps([run.data.params, run.data.tags, mlflow.get_run(parent).data.tags])
    out, err = capfd.readouterr()
    assert "View run" in out and uri in out  # MLflow printed its URL...
    assert URL_SENTINEL not in out + err and URL_SENTINEL not in logged  # ...without the credentials
    for f in (tmp_path / "server").rglob("*"):
        assert not f.is_file() or URL_SENTINEL.encode() not in f.read_bytes(), f

    # a server that does not answer: MLflow's error quotes the URL it tried, without the credentials
    mlflow_env.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow_env.setenv("MLFLOW_TRACKING_URI", f"http://llamaduo:{URL_SENTINEL}@127.0.0.1:{free_port()}")
    with pytest.raises(Exception) as exc:  # noqa: B017 (MLflow's own exception types vary with the failure)
        tracking.connect(MlflowParams(experiment="secrets"))
    assert "127.0.0.1" in str(exc.value) and URL_SENTINEL not in str(exc.value)
    # a token as the user name: MLflow sends basic auth only with a password, so this is said, not guessed
    mlflow_env.setenv("MLFLOW_TRACKING_URI", f"http://{URL_SENTINEL}@127.0.0.1:5000")
    with pytest.raises(UserError, match="MLFLOW_TRACKING_URI .* names a user and no password") as exc:
        tracking.connect(MlflowParams(experiment="secrets"))
    assert URL_SENTINEL not in str(exc.value)
    assert URL_SENTINEL not in "".join(capfd.readouterr())
