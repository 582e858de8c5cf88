"""A real Ray cluster of two nodes on loopback: `ray start --head` and a second `ray start --address=...`, each with
one CPU, its own temp dir and its own ports, everything on 127.0.0.1 (no other address is used).

    with two_node_cluster() as address:   # "127.0.0.1:PORT"
        ...                               # cluster.address = address

Each node is `ray start --block` in its own process group, so stopping is killing the two groups we started
(`ray stop` would stop every Ray process of this user, other tests' and other people's included), and the
worker processes below them (Ray starts those in sessions of their own); the exit checks that none is left.
Small object stores: this machine has 24 GiB and 2 cores. A driver in this process calls `keep_loopback()`
first (see there). Checked by hand with `ss -ltnp` (Ray 2.60): every listener of both nodes is on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

HOST = "127.0.0.1"
OBJECT_STORE_BYTES = 200_000_000


def free_ports(n: int) -> list[int]:
    """n distinct ports the OS has just given out on loopback (closed again, so Ray can bind them)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# `ray start`, except that a loopback --node-ip-address stays 127.0.0.1: Ray swaps it for the machine's network
# address (`resolve_ip_for_localhost`) unless in its single-machine mode, which refuses a second node; the
# node's daemons take the address from their command line, so this one patch keeps the whole cluster on loopback
_RAY_START = ("import sys; import ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
              "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()")


def _ray_bin() -> str:
    return str(Path(sys.executable).parent / "ray")


def _env() -> dict:
    # no usage report (nothing leaves the machine); one thread per task: the CPUs are the cores we declare
    return dict(os.environ, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                RAY_DEDUP_LOGS="0", TOKENIZERS_PARALLELISM="false")


def _worker_range(taken: set[int], width: int = 40) -> tuple[int, int]:
    """Ports for the node's workers (one per process): a range above a free port that holds none of the ports its
    other parts listen on (`ray start` refuses a range that holds one of them)."""
    while True:
        lo = free_ports(1)[0]
        hi = min(lo + width, 65535)
        if not any(lo <= port <= hi for port in taken):
            return lo, hi


def _node_args(temp: Path, cpus: int, object_store: int, taken: tuple[int, ...] = ()) -> list[str]:
    # every port this node listens on, chosen free: two nodes on one machine would collide on Ray's fixed defaults
    nm, om, agent, agent_grpc, metrics, rt_env = free_ports(6)
    lo, hi = _worker_range({nm, om, agent, agent_grpc, metrics, rt_env, *taken})
    return ["--node-ip-address", HOST, f"--num-cpus={cpus}", "--num-gpus=0", f"--object-store-memory={object_store}",
            f"--temp-dir={temp}", f"--node-manager-port={nm}", f"--object-manager-port={om}",
            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_env}",
            f"--min-worker-port={lo}", f"--max-worker-port={hi}", "--disable-usage-stats", "--block"]


def _start(args: list[str], log: Path, *, plain: bool = False) -> subprocess.Popen:
    """`ray start` with the loopback patch, or `plain`: the `ray` command as a user runs it, in Ray's
    single-machine mode (`llamaduo.cluster.ray.SINGLE_MACHINE_ENV`=0), which keeps one node on loopback unpatched."""
    from llamaduo.cluster.ray import SINGLE_MACHINE_ENV

    cmd = [_ray_bin()] if plain else [sys.executable, "-c", _RAY_START]
    env = {**_env(), SINGLE_MACHINE_ENV: "0"} if plain else _env()
    # its own session (process group): the daemons it spawns stay in that group, so we can stop exactly them
    return subprocess.Popen([*cmd, "start", *args], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def _group_pids(pgid: int) -> list[int]:
    """Live processes of the group (a zombie is already dead: it waits for init to reap it)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,pgid=,stat="], capture_output=True, text=True).stdout.split("\n")
    rows = (line.split() for line in out if line.strip())
    return [int(p) for p, g, st in rows if int(g) == pgid and not st.startswith("Z")]


def _descendants(roots: set[int]) -> set[int]:
    """Every live process below `roots` (children, their children, ...), the roots excluded."""
    rows = [line.split() for line in subprocess.run(["ps", "-e", "-o", "pid=,ppid=,stat="], capture_output=True,
                                                     text=True).stdout.splitlines() if line.strip()]
    children: dict[int, list[int]] = {}
    for pid, ppid, st in rows:
        if not st.startswith("Z"):
            children.setdefault(int(ppid), []).append(int(pid))
    out, todo = set(), list(roots)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out and c not in roots:
                out.add(c)
                todo.append(c)
    return out


def _alive(pids: set[int]) -> list[int]:
    live = []
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    live.append(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return live


def _stop(proc: subprocess.Popen, timeout: float = 5) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _group_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_pids(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _group_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    proc.wait(timeout=5)


def _wait_started(proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """Until `ray start --block` says the node is up (polling `ray status` costs a Ray import, ~3 s, per try)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        if "Ray runtime started" in log.read_text():
            return
        time.sleep(0.2)
    raise RuntimeError(f"ray start did not come up in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextmanager
def two_node_cluster(object_store: int = OBJECT_STORE_BYTES, cpus_per_node: int = 1):
    """Start a head and one worker node on loopback; yield the head's address; stop both process groups."""
    with _cluster(2, object_store, cpus_per_node, plain=False) as (address, _):
        yield address


@contextmanager
def single_machine_head(object_store: int = OBJECT_STORE_BYTES, cpus: int = 1):
    """One head node started as docs/scale.md says for one machine: the plain `ray start --head
    --node-ip-address=127.0.0.1` in Ray's single-machine mode, no patch. Yields (address, a function giving the
    pids of its processes now, for checking where they listen)."""
    with _cluster(1, object_store, cpus, plain=True) as found:
        yield found


@contextmanager
def _cluster(nodes: int, object_store: int, cpus_per_node: int, *, plain: bool):
    base = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Ray's unix socket paths must stay < 108 bytes
    gcs, client = free_ports(2)
    address = f"{HOST}:{gcs}"
    procs: list[subprocess.Popen] = []

    def pids() -> set[int]:
        groups = {pid for p in procs for pid in _group_pids(p.pid)}
        return groups | _descendants(groups)

    try:
        for i in range(nodes):
            tmp, log = base / str(i), base / f"node{i}.log"
            tmp.mkdir()
            first = ["--head", f"--port={gcs}", f"--ray-client-server-port={client}", "--include-dashboard=false"]
            procs.append(_start([*(first if i == 0 else [f"--address={address}"]),
                                 *_node_args(tmp, cpus_per_node, object_store, (gcs, client))], log, plain=plain))
            _wait_started(procs[-1], log)
        yield address, pids
    finally:
        # Ray's worker processes run in sessions of their own (not in the node's group): found as descendants of
        # the node's processes before those stop; they exit when their raylet does, or are killed here
        workers = _descendants({pid for p in procs for pid in _group_pids(p.pid)})
        for p in reversed(procs):
            _stop(p)
        deadline = time.monotonic() + 10
        while _alive(workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in _alive(workers):
            os.kill(pid, signal.SIGKILL)
        left = [pid for p in procs for pid in _group_pids(p.pid)] + _alive(workers)
        shutil.rmtree(base, ignore_errors=True)
        if left:
            raise RuntimeError(f"Ray processes left running after the cluster stopped: {left}")


def keep_loopback() -> None:
    """The same patch in this process, for a driver that joins the loopback cluster (`ray.init` would otherwise
    look for the head at the machine's network address, where this cluster does not answer)."""
    import ray._private.services as services

    services.resolve_ip_for_localhost = lambda host: host
