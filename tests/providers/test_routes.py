"""Where the service LLM lives: each route of docs/your-project.md's "Where the service LLM lives" (a gateway serving one Gemini
API version, Azure OpenAI's v1 endpoint, Claude on Bedrock, Gemini and Claude on Vertex AI) through the vendor's own
SDK against a loopback server that answers on that cloud's path layout and checks its credentials (the `api-key`
header, a SigV4 signature, a Google access token minted from a service account key). Each test's params are the
documented recipe's."""

import json

import pytest

from conftest import ROOT
from fakes.azure_openai_server import AZURE_BATCH_ENDPOINT, FakeAzureOpenAI
from fakes.bedrock_server import FakeBedrock
from fakes.gemini_server import FakeGemini
from fakes.vertex_server import FakeVertexClaude, FakeVertexGemini
from llamaduo.config import Params, ProviderParams
from llamaduo.errors import ParamsError
from llamaduo.providers import ChatRequest, ProviderError, get_provider
from llamaduo.providers.cache import CallCache
from llamaduo.providers.engine import run_calls

SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}
AWS = {"AWS_ACCESS_KEY_ID": "AKIDLLAMADUOTEST", "AWS_SECRET_ACCESS_KEY": "llamaduo-aws-secret-0f3c9e",
       "AWS_SESSION_TOKEN": "llamaduo-aws-session-77a1"}
BEDROCK_MODEL = "anthropic.claude-sonnet-4-5-20250929-v1:0"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No credential from this machine reaches a test: each one sets exactly the variables its route reads."""
    for env in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "AZURE_OPENAI_API_KEY",
                "AZURE_OPENAI_AD_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_BEARER_TOKEN_BEDROCK", "ANTHROPIC_BEDROCK_BASE_URL",
                "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION", "GOOGLE_GENAI_USE_VERTEXAI",
                "GOOGLE_GENAI_API_VERSION", "CLOUD_ML_REGION", "ANTHROPIC_VERTEX_PROJECT_ID", "ANTHROPIC_VERTEX_BASE_URL"):
        monkeypatch.delenv(env, raising=False)
    # boto3 would otherwise read ~/.aws and ask the EC2 metadata service for credentials
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # the anthropic SDK keeps one boto3 session per argument set for the process (as a stage would): start afresh
    from anthropic.lib.aws import _auth

    _auth._get_session.cache_clear()


def answer(req, k):
    return json.dumps({"a": f"ok#{k}"})


def reqs(k, n=1):
    return [ChatRequest(messages=(("system", "Be brief."), ("user", f"q{i}")), temperature=0.5, max_tokens=20, n=n,
                        json_schema=SCHEMA) for i in range(k)]


def run(params: dict, requests, tmp_path):
    provider = get_provider("svc", ProviderParams(**{"retry_base_s": 0.01, "max_retries": 2} | params))
    return run_calls(provider, requests, cache=CallCache(tmp_path / "c.sqlite"), desc="t", progress=False)


# -- a gateway that serves one Gemini API version


def test_gemini_api_version_picks_the_path_a_gateway_serves(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-test-key")
    with FakeGemini(answer=answer, only_version="v1beta") as gw:
        # the SDK's default (v1): 405, fatal at once, naming what to change
        with pytest.raises(ProviderError) as exc:
            run({"kind": "gemini", "model": "gemini-2.5-flash", "base_url": gw.base_url, "concurrency": 1}, reqs(3), tmp_path)
        msg = str(exc.value)
        assert "HTTP 405" in msg and f"`providers.svc.base_url` {gw.base_url}" in msg and "`api_version` null" in msg
        assert "path /v1/models/gemini-2.5-flash:generateContent" in msg and "3 of 3" in msg
        assert gw.hits == {"POST v1 (not served)": 1}  # not retried, and no other call sent
        # the recipe: api_version v1beta
        results, usage = run({"kind": "gemini", "model": "gemini-2.5-flash", "base_url": gw.base_url, "api_version": "v1beta"},
                             reqs(3, n=2), tmp_path)
        assert [[json.loads(c.text)["a"] for c in r.choices] for r in results] == [["ok#0", "ok#1"]] * 3
        assert usage.calls == 3 and gw.hits["POST generateContent"] == 3 and {r.model for r in results} == {"fake-001"}


# -- Azure OpenAI, v1 endpoint


AZURE = {"kind": "openai", "cloud": "azure", "model": "gpt-4o-deploy"}


def test_azure_openai_v1_endpoint_with_the_deployment_as_model(tmp_path, monkeypatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-test-key-5521")
    monkeypatch.setenv("OPENAI_API_KEY", "openai-key-not-for-azure")
    with FakeAzureOpenAI(answer=answer) as az:
        provider = get_provider("svc", ProviderParams(**AZURE, base_url=az.base_url))
        assert provider.identity() == "openai:azure:127.0.0.1:gpt-4o-deploy"  # the deployment lives in that resource
        results, usage = run(AZURE | {"base_url": az.base_url}, reqs(2, n=2), tmp_path)
        assert [[json.loads(c.text)["a"] for c in r.choices] for r in results] == [["ok#0", "ok#1"]] * 2
        assert usage.calls == 2 and usage.input_tokens == 20 and {r.model for r in results} == {"gpt-4o-deploy-2026-01-15"}
        assert az.paths == ["POST /openai/v1/chat/completions"] * 2
        assert all(h.get("api-key") == "azure-test-key-5521" for h in az.seen_headers)
        assert "openai-key-not-for-azure" not in json.dumps(az.seen_headers)
        # a deployment the resource does not have: fatal, naming base_url and model
        with pytest.raises(ProviderError, match=r"HTTP 404.*`providers.svc.base_url` http://127.0.0.1:\d+/openai/v1/ \(cloud azure\)"
                                                r".*check base_url and model"):
            run(AZURE | {"base_url": az.base_url, "model": "gpt-5-nowhere", "concurrency": 1}, reqs(2), tmp_path)
        assert len(az.paths) == 3


def test_azure_openai_key_comes_from_its_own_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "openai-key-not-for-azure")
    with FakeAzureOpenAI(answer=answer) as az:
        with pytest.raises(ProviderError, match="AZURE_OPENAI_API_KEY"):
            run(AZURE | {"base_url": az.base_url}, reqs(1), tmp_path)
        assert az.paths == []


def test_azure_openai_batch_api(tmp_path, monkeypatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-test-key-5521")
    with FakeAzureOpenAI(answer=answer, batch_polls=1) as az:
        p = AZURE | {"base_url": az.base_url, "batch": True, "batch_poll_s": 0.05}
        results, usage = run(p, reqs(3, n=2), tmp_path)
        assert usage.batch_calls == usage.calls == 3 and az.requests == []  # no online call
        assert [json.loads(c.text)["a"] for c in results[2].choices] == ["ok#0", "ok#1"]
        # the file, the job (Azure's endpoint name, checked by the fake), polls and the output file, all under /openai/v1/
        assert az.paths[:2] == ["POST /openai/v1/files", "POST /openai/v1/batches"]
        assert all(path.split(" ")[1].startswith("/openai/v1/") for path in az.paths)
        assert all(line["url"] == AZURE_BATCH_ENDPOINT and line["body"]["model"] == "gpt-4o-deploy"
                   for line in next(iter(az._uploads.values())))
        _, again = run(p, reqs(3, n=2), tmp_path)
        assert again.calls == 0 and again.cached == 3


# -- Claude on Bedrock


BEDROCK = {"kind": "anthropic", "cloud": "bedrock", "region": "us-east-1", "model": BEDROCK_MODEL}


def test_bedrock_claude_signed_from_the_aws_environment(tmp_path, monkeypatch):
    for k, v in AWS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "anthropic-key-not-for-bedrock")
    with FakeBedrock(answer=answer, access_key=AWS["AWS_ACCESS_KEY_ID"], secret_key=AWS["AWS_SECRET_ACCESS_KEY"],
                     session_token=AWS["AWS_SESSION_TOKEN"], region="us-east-1") as br:
        provider = get_provider("svc", ProviderParams(**BEDROCK, base_url=br.base_url))
        assert provider.identity() == f"anthropic:bedrock:{BEDROCK_MODEL}"
        results, usage = run(BEDROCK | {"base_url": br.base_url}, reqs(2, n=2), tmp_path)
        assert [[json.loads(c.text)["a"] for c in r.choices] for r in results] == [["ok#0", "ok#0"]] * 2  # no n: 2 calls each
        assert usage.calls == 4 and br.bad_signatures == 0 and {r.model for r in results} == {f"{BEDROCK_MODEL}-20260115"}
        assert br.paths == [f"POST /model/{BEDROCK_MODEL}/invoke"] * 4
        body = br.sent[0]
        assert "model" not in body and body["anthropic_version"] and body["tool_choice"] == {"type": "tool", "name": "answer"}
        headers = json.dumps(br.seen_headers)
        assert AWS["AWS_SECRET_ACCESS_KEY"] not in headers and "anthropic-key-not-for-bedrock" not in headers
    # a server that holds another secret for this key id: the signature fails, 403, fatal at once
    with FakeBedrock(answer=answer, access_key=AWS["AWS_ACCESS_KEY_ID"], secret_key="another-secret",
                     session_token=AWS["AWS_SESSION_TOKEN"], region="us-east-1") as br:
        with pytest.raises(ProviderError, match="HTTP 403.*signature") as exc:
            run(BEDROCK | {"base_url": br.base_url, "concurrency": 1}, reqs(3), tmp_path / "b")
        assert br.bad_signatures == 1 and "3 of 3" in str(exc.value)


def test_bedrock_without_aws_credentials_sends_nothing(tmp_path):
    with FakeBedrock(answer=answer, access_key="x", secret_key="y") as br:
        with pytest.raises(ProviderError, match="bedrock credentials.*AWS credentials"):
            run(BEDROCK | {"base_url": br.base_url, "concurrency": 1}, reqs(2), tmp_path)
        assert br.paths == []


# -- Vertex AI: Gemini and Claude, with a service account key as application default credentials


def test_vertex_gemini_with_application_default_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-key-not-for-vertex")
    with FakeVertexGemini(answer=answer, project="acme-ml", location="europe-west4") as vx:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(vx.key_file(tmp_path)))
        p = {"kind": "gemini", "cloud": "vertex", "project": "acme-ml", "region": "europe-west4", "model": "gemini-2.5-flash",
             "base_url": vx.base_url}
        assert get_provider("svc", ProviderParams(**p)).identity() == "gemini:vertex:gemini-2.5-flash"
        results, usage = run(p, reqs(2, n=2), tmp_path)
        assert [[json.loads(c.text)["a"] for c in r.choices] for r in results] == [["ok#0", "ok#1"]] * 2
        assert usage.calls == 2 and {r.model for r in results} == {"fake-001"}
        calls = [x for x in vx.paths if x != "POST /token"]
        assert calls == ["POST /v1beta1/projects/acme-ml/locations/europe-west4/publishers/google/models/gemini-2.5-flash"
                         ":generateContent"] * 2
        assert vx.issued and vx.unauthorized == 0  # a token minted from the key file, on every call
        assert "gemini-key-not-for-vertex" not in json.dumps(vx.seen_headers)


def test_vertex_claude_with_application_default_credentials(tmp_path, monkeypatch):
    with FakeVertexClaude(answer=answer, project="acme-ml", location="us-east5") as vx:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(vx.key_file(tmp_path)))
        p = {"kind": "anthropic", "cloud": "vertex", "project": "acme-ml", "region": "us-east5", "model": "claude-sonnet-4-5@20250929",
             "base_url": vx.base_url}
        results, usage = run(p, reqs(2), tmp_path)
        assert [json.loads(r.choices[0].text)["a"] for r in results] == ["ok#0"] * 2
        assert usage.calls == 2 and {r.model for r in results} == {"claude-sonnet-4-5@20250929-20260115"}
        calls = [x for x in vx.paths if x != "POST /token"]
        assert calls == ["POST /v1/projects/acme-ml/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929"
                         ":rawPredict"] * 2
        assert vx.unauthorized == 0 and "model" not in vx.sent[0] and vx.sent[0]["anthropic_version"]


def test_vertex_without_credentials_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with FakeVertexGemini(answer=answer) as vx:
        with pytest.raises(ProviderError, match="Google credentials.*missing.json"):
            run({"kind": "gemini", "cloud": "vertex", "project": "fake-project", "region": "europe-west4", "model": "g",
                 "base_url": vx.base_url, "concurrency": 1}, reqs(3), tmp_path)
        assert vx.paths == []


@pytest.mark.parametrize("entry,message", [
    ({"kind": "gemini", "cloud": "azure"}, "`cloud: azure` serves kind openai, not `gemini`"),
    ({"kind": "openai", "cloud": "bedrock"}, "`cloud: bedrock` serves kind anthropic"),
    ({"kind": "openai", "cloud": "azure"}, "`cloud: azure` needs `base_url`"),
    ({"kind": "anthropic", "cloud": "bedrock", "api_key_env": "MY_KEY"}, "`api_key_env` does not apply to `cloud: bedrock`"),
    ({"kind": "gemini", "cloud": "vertex", "batch": True}, "`batch` is not available with `cloud: vertex`"),
    ({"kind": "gemini", "project": "p"}, "`project` applies to `cloud: vertex` only"),
    ({"kind": "openai", "region": "us-east-1"}, "`region` applies to `cloud: vertex` or `cloud: bedrock` only"),
    ({"kind": "openai", "api_version": "v1"}, "`api_version` applies to kind `gemini` only"),
    ({"kind": "anthropic", "cloud": "gcp"}, "`providers.x.cloud`"),
])
def test_route_params_errors_name_the_key(tmp_path, entry, message):
    import yaml

    from llamaduo.config import load_params

    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump({"providers": {"service": {"kind": "local", "model": "m"}, "x": {"model": "m"} | entry}}))
    with pytest.raises(ParamsError) as exc:
        load_params(f)
    assert message in str(exc.value) and "x" in str(exc.value)


# -- acceptance: a judge panel across three routes


TEST = [{"id": f"p{i}", "task": "summarize", "instruction": f"Summarize note {i}.", "response": f"Note {i}.",
         "category": "Summarize", "split": "test"} for i in range(3)]
RESPONSES = [{"prompt_id": f"p{i}", "task": "summarize", "sample": 0, "answer": f"Answer {i}.", "tokens": 2,
              "finish_reason": "stop", "engine": "x"} for i in range(3)]


def judge(req, k):
    return json.dumps({"reason": "close enough", "similarity": 60 + k, "precision": 70 + k})


def panel_params(tmp_path, az, br, gw, api_version):
    return Params.model_validate({
        "providers": {
            "service": {"kind": "local", "model": "m"},
            "azure": AZURE | {"base_url": az.base_url, "max_retries": 0},
            "bedrock": BEDROCK | {"base_url": br.base_url, "max_retries": 0},
            "gateway": {"kind": "gemini", "model": "gemini-2.5-flash", "base_url": gw.base_url, "api_version": api_version,
                        "max_retries": 0, "concurrency": 1},  # one call at a time: the 405 stops the rest unsent
        },
        "cache": {"path": str(tmp_path / "calls.sqlite")},
        "judge": {"judges": ["azure", "bedrock", "gateway"], "m": 2, "pairwise": False},
    })


def evaluate_panel(params):
    """The judge stage's grading with `params`' panel, as the stage opens it."""
    from llamaduo.judging.grading import evaluate
    from llamaduo.providers import open_providers
    from llamaduo.providers.cache import CallCache

    with CallCache(params.cache.path) as cache, open_providers(params.providers, params.judge.panel) as judges:
        return evaluate(responses=RESPONSES, test=TEST, judges=judges, j=params.judge, cache=cache, prompt_dir=str(ROOT / "prompts"))


def test_a_panel_across_azure_bedrock_and_a_v1beta_gateway(tmp_path, monkeypatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-test-key-5521")
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-test-key")
    for k, v in AWS.items():
        monkeypatch.setenv(k, v)
    with (FakeAzureOpenAI(answer=judge) as az,
          FakeBedrock(answer=judge, access_key=AWS["AWS_ACCESS_KEY_ID"], secret_key=AWS["AWS_SECRET_ACCESS_KEY"],
                      session_token=AWS["AWS_SESSION_TOKEN"]) as br,
          FakeGemini(answer=judge, only_version="v1beta") as gw):
        # the gateway's Gemini route left at the SDK's default version: 405, named; the judges before it are paid and cached
        with pytest.raises(ProviderError) as exc:
            evaluate_panel(panel_params(tmp_path, az, br, gw, None))
        msg = str(exc.value)
        assert "HTTP 405" in msg and f"`providers.gateway.base_url` {gw.base_url}" in msg and "`api_version` null" in msg
        assert len(az.requests) == 3 and len(br.requests) == 6 and gw.hits == {"POST v1 (not served)": 1}

        # the recipe's `api_version: v1beta`: the gateway judges; Azure and Bedrock answer from the cache
        judgments, _, usage = evaluate_panel(panel_params(tmp_path, az, br, gw, "v1beta"))
        assert len(az.requests) == 3 and len(br.requests) == 6 and gw.hits["POST generateContent"] == 3
    assert usage["azure"]["calls"] == 0 and usage["azure"]["cached"] == 3
    assert usage["bedrock"]["calls"] == 0 and usage["bedrock"]["cached"] == 6
    assert usage["gateway"]["calls"] == 3 and usage["gateway"]["input_tokens"] == 30 and usage["gateway"]["output_tokens"] == 30
    assert usage["total"]["calls"] == 3
    served = {(r["judge"], r["served_model"]) for r in judgments}
    assert served == {("azure", "gpt-4o-deploy-2026-01-15"), ("bedrock", f"{BEDROCK_MODEL}-20260115"), ("gateway", "fake-001")}
    assert len(judgments) == 3 * 3 * 2 and all(r["ok"] for r in judgments)
    by_judge = {j: sorted(r["precision"] for r in judgments if r["judge"] == j) for j in ("azure", "bedrock", "gateway")}
    # n=2 where the API has it (70, 71 per answer); Anthropic's 2 separate calls are both sample 0 (70, 70)
    assert by_judge == {"azure": [70, 70, 70, 71, 71, 71], "bedrock": [70] * 6, "gateway": [70, 70, 70, 71, 71, 71]}
    versions = {r["judge"]: r["judge_version"] for r in judgments}
    assert versions == {"azure": "openai:azure:127.0.0.1:gpt-4o-deploy", "bedrock": f"anthropic:bedrock:{BEDROCK_MODEL}",
                        "gateway": "gemini:gemini-2.5-flash"}
