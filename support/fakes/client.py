"""A pipeline-like client for the kill-and-restart tests: run_calls over N numbered prompts, in its own process.

usage: python client.py PROVIDER_PARAMS_JSON CACHE_PATH N_REQUESTS N_SAMPLES [GO_FILE]
Prints one JSON line: every request's choice texts and the Usage. With GO_FILE, the client writes
GO_FILE.ready.<pid> once imported and waits for GO_FILE to exist before calling (to start several at once).
"""

import json
import os
import sys
import time
from pathlib import Path

from llamaduo.config import ProviderParams
from llamaduo.providers import ChatRequest, get_provider
from llamaduo.providers.cache import CallCache
from llamaduo.providers.engine import run_calls

SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}


def main(params_json, cache_path, n_requests, n_samples, go_file=None):
    if go_file:
        Path(f"{go_file}.ready.{os.getpid()}").touch()
        while not Path(go_file).exists():
            time.sleep(0.01)
    provider = get_provider("svc", ProviderParams.model_validate(json.loads(params_json)))
    reqs = [ChatRequest(messages=(("user", f"q{i}"),), temperature=0.7, max_tokens=20, n=int(n_samples), json_schema=SCHEMA)
            for i in range(int(n_requests))]
    results, usage = run_calls(provider, reqs, cache=CallCache(cache_path), desc="client", progress=False)
    print(json.dumps({"texts": [[c.text for c in r.choices] for r in results], "usage": usage.as_dict()}))


if __name__ == "__main__":
    main(*sys.argv[1:])
