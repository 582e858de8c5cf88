"""The offline service LLM: a vLLM OpenAI-compatible server on loopback, started by us and shared by a cycle's
service stages (synthesize, baseline, judge: each its own `dvc repro` process).

One server per model and settings: the first stage that misses the call cache starts it (a fully cached run
starts nothing) and writes a small state file under `.llamaduo/servers/` (model hash, port, pid, the command);
the next stage finds it there, checks its pid and /health and uses it, or replaces it when it is dead or
unhealthy. A file lock around the look-up and the start keeps concurrent stages from starting two. The server
outlives the stage that started it; it is stopped at the end of `llamaduo run` and of each loop cycle
(`stop_all`, in finally blocks), or by a small watchdog process: once the DVC process that ran its stages has
exited (a whole or partial `dvc repro`/`dvc exp run`: the server never outlives the run that needed it), or once
no stage has used it for `server.idle_timeout_s`. `llamaduo stop` stops them by hand. Every start appends a line
to `starts.jsonl` there (bench/cycle.py counts them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from llamaduo import vllm_cpu
from llamaduo.atomic import pid_alive
from llamaduo.errors import ProviderError, require_vllm
from llamaduo.hardware import compute_dtype
from llamaduo.providers.openai_compatible import OpenAICompatibleProvider
from llamaduo.weights import fingerprint

SERVED_NAME = "service"
STATE_DIR = Path(".llamaduo/servers")  # relative to the project folder, where every stage runs


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def healthy(host: str, port: int, timeout: float = 5) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


# vendor credentials the vLLM server (and its watchdog) never needs: a local child must not hold the keys of
# the paid services (its log, a crash dump or a plugin could leak them)
_VENDOR_KEYS = re.compile(r"^(OPENAI_API_KEY|ANTHROPIC_API_KEY|GEMINI_API_KEY|GOOGLE_API_KEY|AZURE_.*|AWS_SECRET_ACCESS_KEY"
                          r"|AWS_SESSION_TOKEN|.*_API_KEY)$", re.IGNORECASE)


_SHELLS = frozenset({"sh", "bash", "dash", "zsh"})


def session_pid() -> int | None:
    """The process whose end ends this stage's run: under DVC (which sets DVC_STAGE in each stage command's
    environment) the `dvc repro`/`dvc exp run` process that runs the stages back to back, found above the shell
    it runs each command in. None outside DVC (a stage run by hand or a library call): idle time decides then."""
    if "DVC_STAGE" not in os.environ:
        return None
    import psutil  # vLLM's own dependency, so present wherever a local server can start

    proc = psutil.Process().parent()
    while proc is not None and proc.name() in _SHELLS:
        proc = proc.parent()
    return proc.pid if proc is not None else None


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) without vendor credentials, for local child processes."""
    base = os.environ if base is None else base
    return {k: v for k, v in base.items() if not _VENDOR_KEYS.match(k)}


def _kill_group(pid: int, grace_s: float = 30) -> None:
    """SIGTERM the server's process group (the engine's workers too), SIGKILL it if still there after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when it is our own child
            if not pid_alive(pid):
                return
            time.sleep(0.2)


class ServerState:
    """The state file of one shared server (`<key>.json`), its lock (`<key>.lock`) and log (`<key>.log`)."""

    def __init__(self, key: str, state_dir: Path | None = None):
        self.dir = Path(state_dir or STATE_DIR).resolve()
        self.key = key
        self.path, self.lock_path, self.log_path = (self.dir / f"{key}.{ext}" for ext in ("json", "lock", "log"))

    @contextlib.contextmanager
    def locked(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, also when the holder dies
            try:
                yield self
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def write(self, state: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.path)

    def stop(self, state: dict | None = None) -> bool:
        """Stop the recorded server and remove the state (hold the lock). True when a live server was stopped."""
        state = state or self.read()
        stopped = False
        if state and pid_alive(state["pid"]):
            _kill_group(state["pid"])
            stopped = True
        self.path.unlink(missing_ok=True)
        return stopped


def starts(state_dir: Path | None = None) -> list[dict]:
    """Every server start recorded under the state folder, oldest first."""
    path = Path(state_dir or STATE_DIR) / "starts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def stop_all(state_dir: Path | None = None) -> int:
    """Stop every shared server recorded under the state folder (end of `llamaduo run`, of a loop cycle);
    returns how many were running."""
    folder = Path(state_dir or STATE_DIR)
    n = 0
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        st = ServerState(path.stem, folder)
        with st.locked():
            n += st.stop()
    return n


class LocalVLLMProvider(OpenAICompatibleProvider):
    """Uses the cycle's shared server, starting it lazily at the first request the cache cannot answer."""

    def __init__(self, name: str, params, state_dir: Path | None = None):
        super().__init__(name, params, base_url="http://unused")
        self._state_dir = state_dir
        self._state: ServerState | None = None  # set while this provider is a registered user of a server
        self._start_lock = threading.Lock()
        self._ready = False
        self._start_error: BaseException | None = None

    def dtype(self) -> str:
        return compute_dtype(self.params.server.dtype or "auto")["dtype"]

    def identity(self) -> str:
        # answers computed in another dtype are other answers: the cache keys on it
        return f"local:{fingerprint(self.params.model)}:{self.dtype()}"

    def served_model(self) -> str:
        return SERVED_NAME

    def command(self, port: int) -> list[str]:
        srv = self.params.server
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", self.params.model, "--served-model-name", SERVED_NAME,
               "--host", srv.host, "--port", str(port), "--dtype", self.dtype(),
               "--gpu-memory-utilization", str(srv.gpu_memory_utilization),
               "--max-model-len", str(srv.max_model_len), "--seed", str(srv.seed),
               "--tensor-parallel-size", str(srv.tensor_parallel_size),
               "--data-parallel-size", str(srv.data_parallel_size),
               "--uvicorn-log-level", "warning"]
        if srv.distributed_executor_backend:
            # absent = vLLM's own choice; `ray` joins the Ray cluster the nodes started (docs/training-and-hardware.md)
            cmd += ["--distributed-executor-backend", srv.distributed_executor_backend]
        if srv.enforce_eager:
            cmd.append("--enforce-eager")
        # on CPU a KV cache for the requests this provider sends at once, not a share of the machine's RAM
        for key, value in vllm_cpu.memory_args(srv, self.params.model, self.dtype(), self.params.concurrency).items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        return cmd + list(srv.extra_args)

    def env(self) -> dict[str, str]:
        srv = self.params.server
        env = dict(child_env(), HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"), VLLM_NO_USAGE_STATS="1",
                   DO_NOT_TRACK="1")
        if srv.threads:
            env["OMP_NUM_THREADS"] = str(srv.threads)
        env.update(vllm_cpu.env(srv, base=env))
        return env

    def server_key(self) -> str:
        """Which shared server this provider can use: same model weights, same command (the port aside), same
        environment settings."""
        srv = self.params.server
        spec = [fingerprint(self.params.model), *self.command(0),
                str((srv.threads, srv.cpu_preload, srv.cpu_kvcache_gib, srv.cpu_threads_bind))]
        return hashlib.sha256("\0".join(spec).encode()).hexdigest()[:16]

    def _require(self) -> None:
        require_vllm(f"provider `{self.name}` (kind `local`)")

    def __enter__(self):
        self._require()
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
        """Use the shared server for this model and settings, starting (or replacing) it when needed."""
        self._require()
        srv = self.params.server
        state = ServerState(self.server_key(), self._state_dir)
        with state.locked():  # held through a start: a concurrent stage waits, then finds the server
            st = state.read()
            if st and pid_alive(st["pid"]) and healthy(st["host"], st["port"]):
                why = None
            else:
                why = "none running" if st is None else ("it died" if not pid_alive(st["pid"]) else "it is not healthy")
                if st is not None:
                    print(f"[{self.name}] replacing the vLLM server (pid {st['pid']}): {why}", file=sys.stderr, flush=True)
                    state.stop(st)
                st = self._launch(state, srv)
            st["users"] = [*st.get("users", []), os.getpid()]
            session = session_pid()
            if session is not None and session not in st.setdefault("sessions", []):
                st["sessions"].append(session)
            state.write(st)
        self._state = state
        self.base_url = f"http://{st['host']}:{st['port']}/v1"
        if why is None:
            print(f"[{self.name}] using the running vLLM server at {self.base_url} (pid {st['pid']})", file=sys.stderr, flush=True)

    def _launch(self, state: ServerState, srv) -> dict:
        port = srv.port or _free_port(srv.host)
        cmd = self.command(port)
        launched = time.time()
        log = open(state.log_path, "ab")  # noqa: SIM115 (the server writes it after we return)
        # own process group, so stopping it also stops the engine's worker processes
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        log.close()
        print(f"[{self.name}] starting vLLM for {self.params.model} on http://{srv.host}:{port} (log: {state.log_path})",
              file=sys.stderr, flush=True)
        try:
            self._wait_healthy(proc, srv.host, port, srv.startup_timeout_s, state.log_path)
        except BaseException:
            _kill_group(proc.pid)
            raise
        now = time.time()
        st = {"pid": proc.pid, "host": srv.host, "port": port, "model": self.params.model,
              "model_hash": fingerprint(self.params.model), "command": cmd, "started_at": now, "released_at": now,
              "idle_timeout_s": srv.idle_timeout_s, "users": []}
        with open(state.dir / "starts.jsonl", "a") as fh:
            fh.write(json.dumps({"time": now, "startup_s": round(now - launched, 1), "key": state.key, "pid": proc.pid,
                                 "model": self.params.model, "provider": self.name}) + "\n")
        # the watchdog: its own session, so it outlives this stage and is not in the server's process group
        subprocess.Popen([sys.executable, "-m", "llamaduo.providers.local", "watch", str(state.path)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, env=child_env())
        return st

    def _wait_healthy(self, proc: subprocess.Popen, host: str, port: int, timeout: float, log: Path) -> None:
        start = time.monotonic()
        while True:
            if proc.poll() is not None:
                tail = _tail(log)
                holders = (f"\nthe memory is held by (largest first, llamaduo's servers at the top):\n{memory_holders()}"
                           if refused_for_memory(tail) else "")
                raise ProviderError(f"provider `{self.name}`: the vLLM server exited with code {proc.returncode} "
                                    f"before it was healthy; its log ({log}) ends:\n{tail}{holders}")
            if healthy(host, port):
                print(f"[{self.name}] vLLM healthy after {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
                return
            if time.monotonic() - start > timeout:
                raise ProviderError(f"provider `{self.name}`: vLLM not healthy after {timeout:.0f} s "
                                    f"(`providers.{self.name}.server.startup_timeout_s`); its log ({log}) ends:\n{_tail(log)}")
            time.sleep(0.5)

    def __exit__(self, *exc):
        """Leave the server running for the cycle's next stage; only this process's use of it ends."""
        self._ready = False
        state, self._state = self._state, None
        if state is not None:
            with state.locked():
                st = state.read()
                if st is not None:
                    users = list(st.get("users", []))
                    if os.getpid() in users:
                        users.remove(os.getpid())
                    st["users"], st["released_at"] = users, time.time()
                    state.write(st)
        return False


def is_server(cmdline: list[str]) -> bool:
    """Whether a command line is one of our shared servers (`command()`'s shape)."""
    return "vllm.entrypoints.openai.api_server" in cmdline and SERVED_NAME in cmdline


def memory_holders(limit: int = 5) -> str:
    """The process groups holding the most memory, our own lingering vLLM servers first, each with how to stop it:
    what a refused start says (a vLLM engine refuses to start when its memory is not free)."""
    import psutil

    groups: dict[int, dict] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "memory_info"]):
        with contextlib.suppress(psutil.Error, OSError):
            rss = proc.info["memory_info"].rss if proc.info["memory_info"] else 0
            group = groups.setdefault(os.getpgid(proc.pid), {"rss": 0, "leader": None})
            group["rss"] += rss  # an engine's workers share its group: the server's memory is the group's
            if proc.pid == os.getpgid(proc.pid) or group["leader"] is None:
                group["leader"] = proc
    rows = []
    for pgid, group in groups.items():
        with contextlib.suppress(psutil.Error, OSError):
            cmd = group["leader"].cmdline()
            ours = is_server(cmd)
            if ours:
                where = group["leader"].cwd()
                how = f"`llamaduo stop` in {where}, or `kill -TERM -{pgid}`"
            else:
                how = f"`kill {group['leader'].pid}` if it is yours to stop"
            what = "llamaduo's shared vLLM server" if ours else " ".join(cmd)[:80] or group["leader"].name()
            rows.append((not ours, -group["rss"], f"  pid {group['leader'].pid}: {what}, "
                                                  f"{group['rss'] / 2**30:.1f} GiB (stop: {how})"))
    rows.sort()
    return "\n".join(row[2] for row in rows[:limit])


def refused_for_memory(text: str) -> bool:
    """Whether a vLLM start failed for memory (its CPU worker's and its KV cache's refusals both say so)."""
    return "Available memory" in text or "out of memory" in text.lower()


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def watch(state_path: Path, poll_s: float | None = None) -> str:
    """The watchdog of one server: stop it once no live process uses it and every DVC run that used it has
    ended, or once none has used it for its `idle_timeout_s`; return (and exit) when the server is stopped or
    replaced by anyone else. Returns why it ended."""
    state = ServerState(state_path.stem, state_path.parent)
    first = state.read()
    if first is None:
        return "no server"
    pid, idle = first["pid"], first["idle_timeout_s"]
    poll_s = poll_s or min(5.0, idle / 4)  # a look at a small file: a server outlives its run by seconds
    quiet_since = None
    while True:
        time.sleep(poll_s)
        with state.locked():
            st = state.read()
            if st is None or st["pid"] != pid:
                return "stopped or replaced"
            if not pid_alive(pid):
                state.path.unlink(missing_ok=True)
                return "server died"
            if any(pid_alive(u) for u in st.get("users", [])):
                quiet_since = None
                continue
            sessions = st.get("sessions", [])
            if sessions and not any(pid_alive(s) for s in sessions):
                # the `dvc repro` that ran its stages has exited: no later stage of that run will use it
                state.stop(st)
                return "run ended"
            # idle since the last release, or since we first saw no live user (one died without releasing)
            quiet_since = quiet_since or time.time()
            if time.time() - max(st.get("released_at", 0), quiet_since) >= idle:
                state.stop(st)
                return "idle"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="the shared vLLM server's idle watchdog (started by the provider)")
    ap.add_argument("action", choices=["watch"])
    ap.add_argument("state")
    ap.add_argument("--poll-s", type=float, default=None)
    a = ap.parse_args()
    watch(Path(a.state), a.poll_s)
