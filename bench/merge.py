"""Merge time per billion parameters, per method, on synthetic checkpoints (CPU, streaming one tensor at a time).

Writes a base and k fine-tune-like sub-models (base + small noise on most elements, some elements left
unchanged so resampling has work) as safetensors, then times `merge_checkpoints` for each method.
Writes bench/results/merge.json.

    OMP_NUM_THREADS=1 .venv/bin/python bench/merge.py [--params 64e6 --k 2 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from llamaduo import hardware  # noqa: E402
from llamaduo.atomic import write_json  # noqa: E402
from llamaduo.merging import get_merger  # noqa: E402
from llamaduo.merging.checkpoint import merge_checkpoints  # noqa: E402

METHODS = {"weighted_average": {}, "parameter_selection": {}, "parameter_selection_resample2": {"resample": 2}}


def write_models(root: Path, params: int, k: int, rows: int = 2048) -> tuple[Path, list[Path]]:
    """Base + k sub-models of `params` float32 elements in [rows, 1024] matrices (a 7B model's shapes, fewer of them)."""
    g = torch.Generator().manual_seed(0)
    n = max(params // (rows * 1024), 1)
    base = {f"layers.{i}.weight": torch.randn(rows, 1024, generator=g) for i in range(n)}
    dirs = [root / "base"]
    dirs[0].mkdir()
    save_file(base, dirs[0] / "model.safetensors", metadata={"format": "pt"})
    for j in range(k):
        sub = {}
        for name, t in base.items():
            delta = 1e-3 * torch.randn(t.shape, generator=g)
            delta[torch.rand(t.shape, generator=g) < 0.3] = 0  # ~30% unchanged per sub-model
            sub[name] = t + delta
        d = root / f"sub-{j}"
        d.mkdir()
        save_file(sub, d / "model.safetensors", metadata={"format": "pt"})
        dirs.append(d)
    return dirs[0], dirs[1:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=float, default=64e6, help="parameters per model")
    ap.add_argument("--k", type=int, nargs="+", default=[2, 4], help="sub-model counts")
    ap.add_argument("--out", default=str(ROOT / "bench/results/merge.json"))
    args = ap.parse_args()
    results = {}
    load_before = os.getloadavg()  # other processes on these cores slow every method alike; the file says how busy
    for k in args.k:
        with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
            base, subs = write_models(Path(tmp), int(args.params), k)
            for method, opts in METHODS.items():
                name = method.removesuffix("_resample2")
                start = time.perf_counter()
                stats = merge_checkpoints(base, subs, Path(tmp) / f"out-{method}", get_merger(name, seed=0, **opts))
                wall = time.perf_counter() - start
                results[f"{method}_k{k}"] = {"k": k, "params": stats["params"], "wall_s": round(wall, 2),
                                             "s_per_billion_params": round(wall / stats["params"] * 1e9, 1)}
                print(f"{method} k={k}", results[f"{method}_k{k}"], flush=True)
    out = {"dtype": "float32", "threads": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads(),
           "machine": hardware.describe(), "load_avg_before": [round(x, 2) for x in load_before],
           "load_avg_after": [round(x, 2) for x in os.getloadavg()],
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "note": "wall time includes reading every input tensor and writing the merged shards (page cache warm)",
           "methods": results}
    write_json(args.out, out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
