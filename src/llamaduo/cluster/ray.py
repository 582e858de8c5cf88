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
from collections.abc import Iterator
from contextlib import contextmanager

from llamaduo.cluster import ClusterError

# how long the probe waits for the head's GCS port; a head on the network answers in milliseconds
PROBE_TIMEOUT_S = 5.0


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
                           "head with `ray start --head --port=PORT` or fix the address") from None


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
    import ray

    if ray.is_initialized():
        yield ray
        return
    probe(cluster.address)
    try:
        # no node address given: Ray takes the one this machine reaches the head by (127.0.0.1 for a loopback head)
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
