"""Loopback fakes that the tests and the benchmarks share (support/ is on sys.path for both): servers speaking
each vendor's wire format (OpenAI, Azure OpenAI, Anthropic, Bedrock, Gemini, Vertex) with faults, latency and
rate limits (`server`), a judge that bills by counting tokens (`judge_server`), a real MLflow tracking server,
S3 through moto, and a two-node Ray cluster, all on 127.0.0.1. `serve.py` and `client.py` run as scripts in
their own process, with support/ on PYTHONPATH."""
