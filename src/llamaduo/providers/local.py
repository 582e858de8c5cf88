"""The offline service LLM: a vLLM OpenAI-compatible server on loopback, started and stopped by us."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from llamaduo.errors import ProviderError, require_vllm
from llamaduo.providers.openai_compatible import OpenAICompatibleProvider
from llamaduo.weights import fingerprint

SERVED_NAME = "service"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalVLLMProvider(OpenAICompatibleProvider):
    """Starts the server lazily, at the first request the cache cannot answer, so a fully cached run starts nothing."""

    def __init__(self, name: str, params):
        super().__init__(name, params, base_url="http://unused")
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._start_lock = threading.Lock()
        self._ready = False
        self._start_error: BaseException | None = None

    def identity(self) -> str:
        return f"local:{fingerprint(self.params.model)}"

    def served_model(self) -> str:
        return SERVED_NAME

    def command(self, port: int) -> list[str]:
        srv = self.params.server
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", self.params.model, "--served-model-name", SERVED_NAME,
               "--host", srv.host, "--port", str(port),
               "--gpu-memory-utilization", str(srv.gpu_memory_utilization),
               "--max-model-len", str(srv.max_model_len), "--seed", str(srv.seed),
               "--uvicorn-log-level", "warning"]
        if srv.enforce_eager:
            cmd.append("--enforce-eager")
        return cmd + list(srv.extra_args)

    def __enter__(self):
        require_vllm(f"provider `{self.name}` (kind `local`)")
        return self

    async def ensure_ready(self) -> None:
        if not self._ready:
            await asyncio.to_thread(self._start_once)

    def _start_once(self) -> None:
        with self._start_lock:  # concurrent first calls wait for one start; a failed start fails them all
            if self._start_error is not None:
                raise self._start_error
            if not self._ready:
                try:
                    self.start()
                except BaseException as exc:
                    self._start_error = exc
                    raise
                self._ready = True

    def start(self) -> None:
        require_vllm(f"provider `{self.name}` (kind `local`)")
        srv = self.params.server
        port = srv.port or _free_port(srv.host)
        self.base_url = f"http://{srv.host}:{port}/v1"
        env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"), VLLM_NO_USAGE_STATS="1",
                   DO_NOT_TRACK="1")
        if srv.threads:
            env["OMP_NUM_THREADS"] = str(srv.threads)
        self._log = tempfile.NamedTemporaryFile(prefix="llamaduo-vllm-", suffix=".log", delete=False)
        # own process group, so stopping it also stops the engine's worker processes
        self._proc = subprocess.Popen(self.command(port), stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True)
        print(f"[{self.name}] starting vLLM for {self.params.model} on {self.base_url} (log: {self._log.name})",
              file=sys.stderr, flush=True)
        try:
            self._wait_healthy(f"http://{srv.host}:{port}/health", srv.startup_timeout_s)
        except BaseException as exc:
            self.__exit__(type(exc), exc, None)  # keeps the server log for the reader
            raise

    def _log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(Path(self._log.name).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def _wait_healthy(self, url: str, timeout: float) -> None:
        start = time.monotonic()
        while True:
            if self._proc.poll() is not None:
                raise ProviderError(f"provider `{self.name}`: the vLLM server exited with code {self._proc.returncode} "
                                    f"before it was healthy; its log ends:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        print(f"[{self.name}] vLLM healthy after {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() - start > timeout:
                raise ProviderError(f"provider `{self.name}`: vLLM not healthy after {timeout:.0f} s "
                                    f"(`providers.{self.name}.server.startup_timeout_s`); its log ends:\n{self._log_tail()}")
            time.sleep(1)

    def __exit__(self, *exc):
        self._ready = False
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            if exc and exc[0] is None:
                os.unlink(self._log.name)  # keep the log only when something went wrong
            self._log = None
        return False
