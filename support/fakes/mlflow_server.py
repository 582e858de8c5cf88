"""A real MLflow tracking server on loopback, as a team runs one: `mlflow server` in its own process (sqlite backend,
artifacts proxied by the server into a temp folder), so clients reach runs, the registry and model files over
HTTP only.

    with mlflow_server(tmp_path) as uri:   # "http://127.0.0.1:PORT"
        ...
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    # mlflow server takes a port number, not 0: ask the OS for a free one (a tiny race, harmless on loopback)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(root: str | Path, *, timeout: float = 120.0):
    """Start `mlflow server` on 127.0.0.1 with its database and artifacts under `root`; yield the tracking URI once
    /health answers; kill the server's whole process group at exit (it forks uvicorn workers)."""
    root = Path(root)
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    port = free_port()
    # --artifacts-destination (with the default --serve-artifacts): experiments get `mlflow-artifacts:/` locations
    # that the server proxies, so another process (or machine) loads `models:/` through the server alone, not
    # through a file path that only exists here
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")]
    # no background job runner (it would start a huey consumer process we neither need nor clean up)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(root / "server.log", "wb")
    # a session of its own: at exit one killpg reaches the server and every worker it forked
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}: {(root / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow server not healthy after {timeout:.0f} s: {(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield uri
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, None)):  # the KILL: any worker the leader left behind
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break  # the whole group is gone
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        log.close()
