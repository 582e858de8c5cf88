"""Join the Ray cluster that `cluster.address` names, for as long as a stage needs it.

The stage is a Ray *driver*: it submits tasks to the cluster and waits, and writes its DVC outs itself (so
`dvc repro` on the head node works unchanged). Ray is imported here, inside the functions, so the local engine
never needs it installed. The address is probed with a plain TCP connect first: `ray.init` on an address where
nothing listens retries for about a minute before it fails, and its message does not name the params key.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from llamaduo.cluster import ClusterError

# how long the probe waits for the head's GCS port; a head on the network answers in milliseconds
PROBE_TIMEOUT_S = 5.0
# Ray's single-machine mode: off, Ray swaps a loopback address for the machine's network address, both in
# `ray start --node-ip-address=127.0.0.1` (the head then listens on the network) and in a driver joining
# 127.0.0.1:PORT (it looks for the head there, and times out). Set to 0, every listener of a head started with it
# stays on 127.0.0.1 and a driver finds it there (Ray 2.60, checked with `ss -ltnp`). docs/scale.md, "Past one machine: Ray for curation".
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _host_port(address: str) -> tuple[str, int]:
    """(host, port) of `host:port` or `ray://host:port`; a ClusterError naming the key when it is neither."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"`cluster.address` is {address!r}: expected the head node's host:port (as `ray start --head` "
                           "prints it), ray://host:port, or auto")
    return host.strip("[]"), int(port)


def probe(address: str) -> None:
    """Raise ClusterError naming `cluster.address` unless something accepts a TCP connection there."""
    if address == "auto":
        return  # Ray finds the cluster started on this machine itself (and says so when there is none)
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ClusterError(f"`cluster.address` is {address!r}, but nothing answers there ({exc.strerror or exc}): start the "
                           "head with `ray start --head --port=PORT --node-ip-address=ADDRESS` (docs/scale.md, \"Past one machine: "
                           "Ray for curation\") or fix the address") from None


def driver_env(address: str) -> dict[str, str]:
    """What the driver's environment needs to join the cluster at `address`: Ray's single-machine mode for a
    loopback head (see SINGLE_MACHINE_ENV), unless the user set it; nothing for a head on the network."""
    host = _host_port(address)[0] if address != "auto" else None
    return {SINGLE_MACHINE_ENV: "0"} if host in LOOPBACK and SINGLE_MACHINE_ENV not in os.environ else {}


@contextmanager
def connect(cluster) -> Iterator:
    """The `ray` module, connected to the cluster of `cluster` (a ClusterParams); disconnected afterwards.

    A driver already connected (a bench, a notebook) is used as it is and left connected."""
    if importlib.util.find_spec("ray") is None:
        raise ClusterError("`cluster.engine` is ray, but Ray is not installed: `pip install 'llamaduo[ray]'` "
                           "(on this machine and every worker)")
    if not cluster.address:
        raise ClusterError("`cluster.address` is null but `cluster.engine` is ray: set the head node's host:port or auto")
    # Ray Data's usage collector queries a Prometheus at localhost:9090 after each run and logs a traceback
    # when there is none (the usual case); the user's own setting wins
    os.environ.setdefault("RAY_DATA_USAGE_DISABLED", "1")
    if "ray" not in sys.modules:  # Ray reads it once, at import (a driver already running Ray keeps its own)
        os.environ.update(driver_env(cluster.address))
    import ray

    if ray.is_initialized():
        yield ray
        return
    probe(cluster.address)
    try:
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"`cluster.address` is {cluster.address!r}, but Ray could not join the cluster there: {exc}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def node_id() -> str:
    """The id of the Ray node this code runs on (inside a task)."""
    import ray

    return ray.get_runtime_context().get_node_id()
