"""The local provider's shared server with a plain HTTP server in place of vLLM (`python -m http.server` serving a
file named `health`, so GET /health answers 200): the same process, port, pid and signal handling, started in
seconds. Used by test_local.py and test_vllm_memory.py."""

from __future__ import annotations

import sys

import pytest

from llamaduo.config import Params
from llamaduo.providers.local import stop_all

FAKE = '''
import sys
from llamaduo.providers.local import LocalVLLMProvider


class FakeVLLM(LocalVLLMProvider):
    """The provider with a plain HTTP server in place of vLLM (serves DOCROOT/health)."""
    docroot = None

    def _require(self):
        pass

    def command(self, port):
        return [sys.executable, "-m", "http.server", str(port), "--bind", self.params.server.host,
                "--directory", self.docroot]


if __name__ == "__main__":  # one stage: use the server, report it, release it
    import json, time
    from pathlib import Path
    from llamaduo.config import Params
    model, docroot, state_dir, hold = sys.argv[1:5]
    FakeVLLM.docroot = docroot
    p = Params.model_validate({"providers": {"service": {"kind": "local", "model": model}}})
    prov = FakeVLLM("service", p.providers["service"], state_dir=Path(state_dir))
    prov.start()
    print(json.dumps({"base_url": prov.base_url, "pid": prov._state.read()["pid"]}), flush=True)
    time.sleep(float(hold))
    prov.__exit__(None, None, None)
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """(provider factory, state dir, helper script) in a project folder of its own."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "health").write_text("ok")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE)
    sys.path.insert(0, str(tmp_path))
    import fake_vllm

    fake_vllm.FakeVLLM.docroot = str(tmp_path / "www")
    state_dir = tmp_path / ".llamaduo" / "servers"

    def make(**server):
        p = Params.model_validate({"providers": {"service": {"kind": "local", "model": str(model), "server": server}}})
        return fake_vllm.FakeVLLM("service", p.providers["service"], state_dir=state_dir)

    yield make, state_dir, script, model
    stop_all(state_dir)
    sys.path.remove(str(tmp_path))
    sys.modules.pop("fake_vllm", None)
