"""Curation on a real two-node Ray cluster (support/fakes/ray_cluster.py: two `ray start`, one CPU each, on
127.0.0.1) gives exactly what the local path gives: the same kept ids, drop reasons, counts and Parquet bytes.

The rows are bench/curate.py's (stitched from the coverage rows, with planted near duplicates and test leaks),
3,000 of them plus planted exact copies and a later cycle ahead of an earlier one, rather than ~20k:
the cluster costs ~20 s to start and stop on this 2-core machine, and 3,000 rows already reach every drop
reason the bench rows reach while keeping the module under a minute.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_stage
from fakes.ray_cluster import free_ports, keep_loopback, single_machine_head, two_node_cluster
from llamaduo import tables
from llamaduo.cluster import ClusterError
from llamaduo.config import ClusterParams, CurateParams, load_params
from llamaduo.curation import curate
from llamaduo.errors import ParamsError

try:  # the `test` extra installs it (the imports above need no Ray): without it this module fails, never skips
    import ray  # noqa: F401
except ImportError:
    pytest.fail("tests/curation/test_ray.py needs Ray, which is not installed: pip install -e '.[test]' (or 'ray[data]>=2.40')",
                pytrace=False)
# one worker under `pytest -n`: the module's two-node cluster is started once
pytestmark = pytest.mark.xdist_group("ray")

ROWS = 3000


def _bench():
    spec = importlib.util.spec_from_file_location("bench_curate", ROOT / "bench" / "curate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def data():
    rows, train, test, dups, leaks = _bench().make_rows(ROWS, seed=3)
    rng = random.Random(0)
    # exact copies (a copy of a kept row, and of a train row), and cycle 2 rows placed first: the sort by cycle
    # and the exact-key walk must come out the same on both paths
    rows += [dict(rows[rng.randrange(ROWS)], id=f"copy{k}") for k in range(20)]
    rows += [dict(train[k], id=f"trcopy{k}", seed_id="s", provider="bench", model="bench", request_id="t", cycle=1) for k in range(5)]
    rows = [dict(r, cycle=2) for r in rows[-300:]] + rows[:-300]
    return rows, train, test


@pytest.fixture(scope="module")
def cluster():
    with two_node_cluster() as address:
        keep_loopback()
        yield address


def _write_and_hash(tmp: Path, name: str, kept: list[dict]) -> str:
    path = tmp / f"{name}.parquet"
    tables.write(path, "synthetic", kept)
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_ray_curation_equals_local_and_runs_on_both_nodes(cluster, data, tmp_path):
    rows, train, test = data
    p = CurateParams(**yaml.safe_load((ROOT / "params.yaml").read_text())["curate"])
    kept, dropped, counts = curate(rows, train=train, test=test, p=p)
    stats = {}
    # small blocks: more tasks than CPUs, as at scale
    r_kept, r_dropped, r_counts = curate(rows, train=train, test=test, p=p, stats=stats,
                                         cluster=ClusterParams(engine="ray", address=cluster, block_rows=500))
    assert [r["id"] for r in r_kept] == [r["id"] for r in kept]
    assert [(d["id"], d["reason"]) for d in r_dropped] == [(d["id"], d["reason"]) for d in dropped]
    assert r_counts == counts  # per-cycle counts, decontaminated list, examples with what each rule matched
    assert _write_and_hash(tmp_path, "ray", r_kept) == _write_and_hash(tmp_path, "local", kept)
    # the rows exercise every kind of drop the bench plants, so equality above means something
    for reason in ("near_duplicate", "near_duplicate_train", "exact_duplicate", "exact_duplicate_train",
                   "test_contamination_ngram"):
        assert counts["dropped"].get(reason, 0) > 0, (reason, counts["dropped"])
    # the work ran on both nodes: the row steps, the LSH's shares of the bands and the ROUGE-L scoring
    blocks = -(-len(rows) // 500)
    assert len(stats["map_nodes"]) == 2 and sum(stats["map_nodes"].values()) == len(rows)
    assert len(set(stats["map_nodes"]) | set(stats["group_nodes"]) | set(stats["confirm_nodes"])) == 2
    assert sum(stats["group_nodes"].values()) == 4 and sum(stats["confirm_nodes"].values()) == blocks
    assert stats["pairs_close"] > counts["dropped"]["near_duplicate"]


def _project(tmp: Path, rows, train, test, cluster: dict) -> Path:
    """A folder with the curate stage's inputs and a params.yaml with this `cluster` section."""
    tmp.mkdir()
    (tmp / "params.yaml").write_text(yaml.safe_dump({"cluster": cluster}))
    for name, split in (("train", train), ("test", test)):
        tables.write(tmp / f"{name}.parquet", "split",
                     [{k: r[k] for k in ("id", "task", "instruction", "response")} | {"category": None, "split": name} for r in split])
    tables.write(tmp / "raw.parquet", "synthetic", rows)
    return tmp


STAGE_ARGS = ("--raw", "raw.parquet", "--train", "train.parquet", "--test", "test.parquet", "--out", "out/curated.parquet",
              "--dropped-out", "out/dropped.parquet", "--metrics-out", "out/curate.json")


def test_the_stage_writes_the_same_bytes_with_either_engine(cluster, data, tmp_path):
    """The curate stage as DVC runs it: the same curated.parquet (DVC's hash is the file's md5), dropped rows and
    metrics; here with `cluster.storage` set, so the rows reach the workers as Parquet in shared storage (a local
    folder both nodes see), which is removed afterwards."""
    rows, train, test = data
    rows = rows[:1000]
    store = tmp_path / "store"
    store.mkdir()
    local = _project(tmp_path / "local", rows, train, test, {"engine": "local"})
    remote = _project(tmp_path / "ray", rows, train, test, {"engine": "ray", "address": cluster, "block_rows": 200,
                                                           "storage": store.as_uri()})
    # the stage's process joins the loopback cluster as this one does (sitecustomize: the same patch)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nsys.path.append({str(ROOT / 'support')!r})\n"
                                           "from fakes.ray_cluster import keep_loopback\nkeep_loopback()\n")
    a = run_stage("curate.py", *STAGE_ARGS, cwd=local)
    assert a.returncode == 0, a.stderr[-3000:]
    env_cmd = [sys.executable, str(ROOT / "stages" / "curate.py"), *STAGE_ARGS]
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    b = subprocess.run(env_cmd, cwd=remote, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": path})
    assert b.returncode == 0, b.stderr[-3000:]
    for f in ("curated.parquet", "dropped.parquet", "curate.json"):
        assert (local / "out" / f).read_bytes() == (remote / "out" / f).read_bytes(), f
    assert list(store.iterdir()) == []  # the scratch Parquet is gone


def test_one_machine_as_the_readme_starts_it_listens_on_loopback_only_and_the_stage_joins_it(data, tmp_path, monkeypatch):
    """The README's one-machine recipe, unpatched: `ray start --head --node-ip-address=127.0.0.1` in Ray's
    single-machine mode. Without that mode Ray swaps 127.0.0.1 for the machine's network address (the head then
    listens there, and a driver joining 127.0.0.1 looks for it there and times out). Every socket its processes
    listen on is on 127.0.0.1, and the curate stage, whose environment does not set the mode, joins it
    (`cluster.ray.driver_env`) and writes what the local engine writes."""
    import psutil

    from llamaduo.cluster.ray import SINGLE_MACHINE_ENV, driver_env

    monkeypatch.delenv(SINGLE_MACHINE_ENV, raising=False)
    assert driver_env("127.0.0.1:6379") == {SINGLE_MACHINE_ENV: "0"} and driver_env("10.0.0.5:6379") == {}
    assert driver_env("auto") == {}
    monkeypatch.setenv(SINGLE_MACHINE_ENV, "1")
    assert driver_env("127.0.0.1:6379") == {}  # the user's own setting wins
    monkeypatch.delenv(SINGLE_MACHINE_ENV)
    rows, train, test = data
    rows = rows[:300]
    local = _project(tmp_path / "local", rows, train, test, {"engine": "local"})
    a = run_stage("curate.py", *STAGE_ARGS, cwd=local)
    assert a.returncode == 0, a.stderr[-3000:]
    with single_machine_head() as (address, pids):
        listening = set()
        for pid in pids():
            try:
                listening |= {c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet")
                              if c.status == psutil.CONN_LISTEN}
            except psutil.NoSuchProcess:
                pass
        assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
        remote = _project(tmp_path / "ray", rows, train, test, {"engine": "ray", "address": address, "block_rows": 100})
        env = {k: v for k, v in os.environ.items() if k != SINGLE_MACHINE_ENV}
        b = subprocess.run([sys.executable, str(ROOT / "stages" / "curate.py"), *STAGE_ARGS], cwd=remote,
                           capture_output=True, text=True, timeout=300, env=env)
        assert b.returncode == 0, b.stderr[-3000:]
    for f in ("curated.parquet", "dropped.parquet", "curate.json"):
        assert (local / "out" / f).read_bytes() == (remote / "out" / f).read_bytes(), f


def test_engine_ray_without_an_address_names_the_key(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"cluster": {"engine": "ray"}}))
    with pytest.raises(ParamsError, match=r"cluster\.address"):
        load_params(tmp_path / "params.yaml")


def test_an_unreachable_address_names_the_key_and_writes_nothing(data, tmp_path):
    rows, train, test = data
    port = free_ports(1)[0]  # free: nothing listens there
    with pytest.raises(ClusterError, match=r"`cluster\.address` is '127\.0\.0\.1:\d+', but nothing answers there"):
        curate(rows[:50], train=train, test=test, p=CurateParams(), cluster=ClusterParams(engine="ray", address=f"127.0.0.1:{port}"))
    with pytest.raises(ClusterError, match=r"cluster\.address"):
        curate(rows[:50], train=train, test=test, p=CurateParams(), cluster=ClusterParams(engine="ray", address="no-port-here"))
    proj = _project(tmp_path / "p", rows[:50], train, test, {"engine": "ray", "address": f"127.0.0.1:{port}"})
    out = run_stage("curate.py", *STAGE_ARGS, cwd=proj)
    assert out.returncode == 2 and "cluster.address" in out.stderr, out.stderr[-2000:]
    assert not (proj / "out").exists() or not any((proj / "out").iterdir())  # nothing half-written
