"""Curation past one machine: the Ray executor on a two-node loopback cluster at 256k and 1M rows, beside the local
executor on the same rows, in the same run.

The figure that counts is the Ray driver's memory: the driver (the stage's process) holds only the order-dependent
state, a few bytes a row, never the rows. So its peak RSS may grow by at most 200 bytes a row from 256k to 1M rows
(`driver_growth_bytes_per_row`, goal `goal_bytes_per_row`). Each run is the curate stage's work in a child process of
its own (curate_parquet: Parquet in, the two tables out, the counts), so each peak is its own; the Ray workers report
theirs from inside their tasks. Every run's outputs are compared with the local executor's, byte for byte.

The rows are bench/curate.py's (stitched from the coverage rows, planted near duplicates and test leaks). The cluster
is support/fakes/ray_cluster.py's: two `ray start` nodes on 127.0.0.1 with one CPU each, started once for both sizes.

What this machine cannot show: its two nodes share one machine's 2 cores (and the driver needs CPU as well), so the
Ray rows/s here are the engine's overhead, not a speedup. On a real cluster each node brings its own cores and memory:
the row steps (most of the work), the LSH's shares of the bands and the scoring spread over the nodes, and what stays
on the driver is the exact step and the walk (a lookup per row, a comparison per pair).

    OMP_NUM_THREADS=1 .venv/bin/python bench/scale.py [--rows 256000 1000000]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.append(str(ROOT / "support"))  # the loopback Ray cluster, shared with the tests

from llamaduo import hardware, tables  # noqa: E402
from llamaduo.atomic import write_json  # noqa: E402
from llamaduo.config import ClusterParams, CurateParams  # noqa: E402

GOAL_BYTES_PER_ROW = 200
OUTPUTS = ("curated.parquet", "dropped.parquet", "curate.json")


def _bench_curate():
    spec = importlib.util.spec_from_file_location("bench_curate", ROOT / "bench" / "curate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM, its own memory's high-water mark. (Not ru_maxrss: Linux carries a parent's peak
    across fork and exec into it, and this bench's parent holds the rows.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(work: Path, engine: str, address: str | None, block_rows: int) -> None:
    """One executor's run of the curate stage's work in `work`; its figures as JSON on stdout."""
    import pyarrow as pa

    from llamaduo.curation import curate_parquet

    pa.set_memory_pool(pa.system_memory_pool())  # as the stage does (stages/curate.py)
    p = CurateParams(**yaml.safe_load((ROOT / "params.yaml").read_text())["curate"])
    stats: dict = {}
    cluster = None
    if engine == "ray":
        from fakes.ray_cluster import keep_loopback

        keep_loopback()  # the cluster is on loopback only
        cluster = ClusterParams(engine="ray", address=address, block_rows=block_rows)
    out = work / engine
    t0 = time.perf_counter()
    counts = curate_parquet(work / "raw.parquet", out=out / "curated.parquet", dropped_out=out / "dropped.parquet",
                            train=tables.read(work / "train.parquet", "split"), test=tables.read(work / "test.parquet", "split"),
                            p=p, cluster=cluster, stats=stats)
    write_json(out / "curate.json", counts)
    wall, peak = time.perf_counter() - t0, peak_rss_mb()
    md5 = {}
    for f in OUTPUTS:
        with (out / f).open("rb") as fh:
            md5[f] = hashlib.file_digest(fh, "md5").hexdigest()
    print(json.dumps({"wall_s": round(wall, 2), "rows_per_s": round(counts["rows_in"] / wall), "peak_rss_mb": round(peak, 1),
                      "rows_out": counts["rows_out"], "stats": stats, "md5": md5}))


def run_child(work: Path, engine: str, address: str | None, block_rows: int) -> dict:
    cmd = [sys.executable, __file__, "--child", engine, "--work", str(work), "--block-rows", str(block_rows)]
    if address:
        cmd += ["--address", address]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), check=False)
    if done.returncode:
        raise SystemExit(f"{engine} run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_inputs(work: Path, n: int) -> dict:
    """The bench rows, train and test as the stage's three Parquet inputs; what was planted."""
    rows, train, test, dups, leaks = _bench_curate().make_rows(n)
    for name, split in (("train", train), ("test", test)):
        tables.write(work / f"{name}.parquet", "split",
                     [{k: r[k] for k in ("id", "task", "instruction", "response")} | {"category": None, "split": name} for r in split])
    tables.write(work / "raw.parquet", "synthetic", rows)
    return {"train_rows": len(train), "test_rows": len(test), "planted_duplicates": len(dups), "planted_leaks": len(leaks)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs=2, default=[256_000, 1_000_000])
    ap.add_argument("--block-rows", type=int, default=20_000)
    ap.add_argument("--object-store-mb", type=int, default=3000)
    ap.add_argument("--out", default=str(ROOT / "bench/results/scale.json"))
    ap.add_argument("--child", choices=["local", "ray"])
    ap.add_argument("--work")
    ap.add_argument("--address")
    args = ap.parse_args()
    if args.child:
        return child(Path(args.work), args.child, args.address, args.block_rows)

    from fakes.ray_cluster import two_node_cluster

    # a stopped bench (timeout, Ctrl-C) still stops the cluster it started: SIGTERM runs the `finally`s too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t_all = time.perf_counter()
    sizes = {}
    t0 = time.perf_counter()
    with two_node_cluster(object_store=args.object_store_mb * 1_000_000) as address:
        start_s = time.perf_counter() - t0
        for n in args.rows:
            work = Path(tempfile.mkdtemp(prefix="scale-bench-"))
            try:
                planted = write_inputs(work, n)
                local = run_child(work, "local", None, args.block_rows)
                print(f"{n} rows, local: {local['wall_s']} s, {local['peak_rss_mb']} MB", file=sys.stderr)
                ray_run = run_child(work, "ray", address, args.block_rows)
                print(f"{n} rows, ray: {ray_run['wall_s']} s, driver {ray_run['peak_rss_mb']} MB", file=sys.stderr)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            stats = ray_run.pop("stats")
            local.pop("stats")
            sizes[str(n)] = planted | {
                "rows": n, "local": local,
                "ray": ray_run | {"driver_peak_rss_mb": ray_run.pop("peak_rss_mb"), "nodes": len(stats["map_nodes"]),
                                  "rows_per_node": sorted(stats["map_nodes"].values()), "map_s": stats.get("map_s"),
                                  "near_s": stats.get("near_s"), "pairs_close_scored": stats.get("pairs_close"),
                                  "band_tasks_per_node": sorted(stats.get("group_nodes", {}).values()),
                                  "score_tasks_per_node": sorted(stats.get("confirm_nodes", {}).values()),
                                  "worker_peak_rss_mb": stats.get("worker_peak_rss_mb"),
                                  "writer_peak_rss_mb": stats.get("writer_peak_rss_mb")},
                "identical_outputs": local["md5"] == ray_run["md5"],
                "ray_over_local_rows_per_s": round(ray_run["rows_per_s"] / local["rows_per_s"], 3)}
    small, large = (sizes[str(n)] for n in args.rows)
    growth = (large["ray"]["driver_peak_rss_mb"] - small["ray"]["driver_peak_rss_mb"]) * 2**20 / (large["rows"] - small["rows"])
    local_growth = (large["local"]["peak_rss_mb"] - small["local"]["peak_rss_mb"]) * 2**20 / (large["rows"] - small["rows"])
    result = {
        "sizes": sizes,
        "driver_growth_bytes_per_row": round(growth, 1), "goal_bytes_per_row": GOAL_BYTES_PER_ROW,
        # the same growth of the local executor's process, which holds the signatures and builds the output tables
        "local_growth_bytes_per_row": round(local_growth, 1),
        "driver_over_local_growth": round(growth / local_growth, 3),
        "met_goal": growth < GOAL_BYTES_PER_ROW and all(s["identical_outputs"] for s in sizes.values()),
        "block_rows": args.block_rows, "object_store_mb_per_node": args.object_store_mb, "cluster_start_s": round(start_s, 1),
        "cannot_show": ("both Ray nodes run on this one 2-core machine (one CPU each, the driver beside them), so the "
                        "rows/s ratio is Ray's overhead, not a speedup; a real cluster gives each node its own cores and "
                        "memory: measure rows/s there against the node count"),
        "bench_wall_s": round(time.perf_counter() - t_all, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    write_json(args.out, result | {"machine": hardware.describe()})
    print(json.dumps(result, indent=2))
    if not all(s["identical_outputs"] for s in sizes.values()):
        raise SystemExit("the two executors' outputs differ")


if __name__ == "__main__":
    main()
