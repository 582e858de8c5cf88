"""The lift, measured: the untuned base model against adapters trained on coverage train, scored against the
references with no judge (ROUGE-L F1, chrF, exact match; 0-100, bootstrap 95% intervals), plus a learning curve.

Per task (default: classify and closed_qa, the shipped tasks with short answers): the seeded train/test split
the prepare stage makes (`data.train_ratio`, `data.seed`), K sampled answers per test prompt from the base
model, then from an adapter trained on the first 25%, 50% and 100% of the train rows (in the split's hash order, a seeded random order) for
`train.epochs` passes. Everything goes through the project's own code: llamaduo.coverage (load_task, split),
llamaduo.training.train, llamaduo.inference.generate, llamaduo.judging.reference. Params are the schema's
defaults (llamaduo.config) with only what the flags set changed; no prompt or metric is tuned here.

`*_lift` is tuned minus base with a paired bootstrap interval over test prompts (each prompt's K answers averaged,
the same prompts resampled for both models). Writes bench/results/lift.json (with hardware.describe()).

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python bench/lift.py                 # the full run (hours on a CPU)
    .venv/bin/python bench/lift.py --tasks classify --k 2 --max-test 10 --fractions 1.0
    .venv/bin/python bench/lift.py --quick                                            # smoke run: minutes, to a temp file
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llamaduo import hardware  # noqa: E402
from llamaduo.atomic import write_json  # noqa: E402
from llamaduo.config import InferParams, Params, TrainParams  # noqa: E402
from llamaduo.coverage import load_task, split  # noqa: E402
from llamaduo.inference import generate  # noqa: E402
from llamaduo.judging.reference import REFERENCE_METRICS, Scorer, reference_scores  # noqa: E402
from llamaduo.judging.scores import reference_summary  # noqa: E402
from llamaduo.training import train  # noqa: E402

# --quick: enough to run every step of the full path once, nothing more (its figures mean nothing)
QUICK = {"k": 2, "max_test": 3, "fractions": [0.5, 1.0], "max_train": 8, "max_steps": 2, "max_new_tokens": 24, "max_length": 256}


def base_dir(arg: str | None, work: Path) -> str:
    if arg:
        return arg
    if (ROOT / "models/base/config.json").is_file():
        return str(ROOT / "models/base")
    from llamaduo.weights import materialize

    p = Params().model
    materialize(base=p.base, gguf_package=p.gguf_package, out=work / "base")
    return str(work / "base")


def paired_lift(base: list[dict], tuned: list[dict], metric: str, *, resamples: int, seed: int) -> dict:
    """Mean of tuned minus base per test prompt (each side's K answers averaged), with a percentile bootstrap 95%
    interval that resamples prompts: both models answered the same prompts, so the pairing removes their spread."""
    import numpy as np

    def per_prompt(rows):
        out: dict[str, list[float]] = {}
        for r in rows:
            out.setdefault(r["prompt_id"], []).append(r[metric])
        return {k: float(np.mean(v)) for k, v in out.items()}

    b, t = per_prompt(base), per_prompt(tuned)
    ids = sorted(set(b) & set(t))
    d = np.array([t[i] - b[i] for i in ids])
    if not len(d):
        return {"mean": None, "ci95": None, "prompts": 0}
    means = d[np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"mean": round(float(d.mean()), 3), "ci95": [round(float(lo), 3), round(float(hi), 3)], "prompts": len(ids)}


def _child(spec_path: str) -> None:
    """`--child SPEC`: one `generate` or `train` call, its result written beside the spec (see `apart`)."""
    spec = json.loads(Path(spec_path).read_text())
    if spec["kind"] == "generate":
        answers, stats = generate(test=spec["test"], base_dir=spec["base"], adapter_dir=spec["adapter"],
                                  p=InferParams(**spec["infer"]), compute=spec["compute"],
                                  # the untuned base: generate's `merged_dir` path takes a full model folder as it is
                                  merged_dir=None if spec["adapter"] else spec["base"])
        write_json(spec_path + ".out", {"answers": answers, "stats": stats})
    else:
        metrics = train(rows=spec["rows"], base_dir=spec["base"], out_dir=spec["out_dir"], p=TrainParams(**spec["train"]),
                        dtype=spec["dtype"])
        write_json(spec_path + ".out", {"metrics": metrics})


def apart(kind: str, work: Path, **spec) -> dict:
    """`generate` or `train` in a process of its own, so that each step gives its memory back: vLLM's offline
    engine left its engine and worker processes (5 GiB) alive after the call returned, and the next engine in the
    same process was killed for memory (a --quick run here); the bench process held 9.4 GB after training in it."""
    path = work / f"{kind}-{time.monotonic_ns()}.json"
    write_json(path, {"kind": kind, **spec})
    res = subprocess.run([sys.executable, __file__, "--child", str(path)])
    if res.returncode:
        raise SystemExit(f"{kind} failed (exit {res.returncode}); its output is above")
    return json.loads(Path(f"{path}.out").read_text())


def answer_and_score(test, *, base, adapter, p, compute, scorer, boot, work) -> tuple[list[dict], dict, dict]:
    out = apart("generate", work, test=test, base=base, adapter=adapter, infer=p.model_dump(), compute=compute)
    answers, stats = out["answers"], out["stats"]
    rows = reference_scores(answers, test, scorer=scorer)
    return rows, reference_summary(rows, **boot), {k: stats.get(k) for k in ("engine", "wall_s", "load_s", "generate_s", "tokens")}


def run_task(task: str, *, args, params: Params, base: str, work: Path, compute: dict, scorer: Scorer) -> dict:
    boot = {"resamples": params.judge.bootstrap, "seed": params.judge.seed}
    rows = load_task(ROOT / params.data.coverage_dir, task)
    train_rows, test = split(rows, train_ratio=params.data.train_ratio, seed=params.data.seed)
    if args.max_train:
        train_rows = train_rows[:args.max_train]
    if args.max_test:
        test = test[:args.max_test]
    ip = params.infer
    t0 = time.perf_counter()
    base_rows, base_sum, base_run = answer_and_score(test, base=base, adapter=None, p=ip, compute=compute, scorer=scorer, boot=boot,
                                                      work=work)
    print(f"[{task}] base: rouge_l {base_sum['rouge_l']['mean']} ({time.perf_counter() - t0:.0f} s)", flush=True)

    curve, tuned_rows = [], None
    for frac in sorted(args.fractions):
        n = max(1, round(frac * len(train_rows)))
        t1 = time.perf_counter()
        m = apart("train", work, rows=train_rows[:n], base=base, out_dir=str(work / f"{task}-{frac}"),
                  train=params.train.model_dump(), dtype=params.compute.dtype)["metrics"]
        train_s = time.perf_counter() - t1
        rows_f, sum_f, run_f = answer_and_score(test, base=base, adapter=str(work / f"{task}-{frac}"), p=ip, compute=compute,
                                                scorer=scorer, boot=boot, work=work)
        curve.append({"fraction": frac, "train_rows": n, "steps": m.get("steps"), "train_loss": m.get("train_loss"),
                      "train_wall_s": round(train_s, 1), "infer": run_f,
                      **{metric: sum_f[metric] for metric in REFERENCE_METRICS}})
        print(f"[{task}] {frac:.0%} of train ({n} rows, {m.get('steps')} steps, {train_s:.0f} s): "
              f"rouge_l {sum_f['rouge_l']['mean']}", flush=True)
        tuned_rows, tuned_sum = rows_f, sum_f  # the largest fraction is the tuned model

    out = {"train_rows": len(train_rows), "test_prompts": len(test), "k": ip.k, "epochs": params.train.epochs,
           "max_steps": params.train.max_steps, "steps": curve[-1]["steps"], "base_infer": base_run,
           "wall_s": round(time.perf_counter() - t0, 1)}
    for metric in REFERENCE_METRICS:
        for who, s in (("base", base_sum), ("tuned", tuned_sum)):
            out[f"{metric}_{who}"] = s[metric]["mean"]
            out[f"{metric}_{who}_ci95"] = [s[metric]["ci95_low"], s[metric]["ci95_high"]]
        out[f"{metric}_lift"] = paired_lift(base_rows, tuned_rows, metric, **boot)
    out["curve"] = curve
    return out


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return _child(sys.argv[2])
    defaults = Params()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["classify", "closed_qa"])
    ap.add_argument("--k", type=int, default=None, help=f"answers per test prompt (default infer.k = {defaults.infer.k})")
    ap.add_argument("--max-test", type=int, default=None, help="first N test prompts per task (default: all)")
    ap.add_argument("--max-train", type=int, default=None, help="first N train rows per task (default: all)")
    ap.add_argument("--fractions", type=float, nargs="+", default=None, help="learning curve: shares of train (default 0.25 0.5 1)")
    ap.add_argument("--epochs", type=float, default=None, help=f"train.epochs (default {defaults.train.epochs})")
    ap.add_argument("--max-steps", type=int, default=None, help="train.max_steps cap (default: none)")
    ap.add_argument("--batch-size", type=int, default=None, help=f"train.batch_size: rows per step (default {defaults.train.batch_size})")
    ap.add_argument("--engine", default=None, choices=["auto", "vllm", "transformers"], help="infer.engine (default auto)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for training and the transformers engine")
    ap.add_argument("--quick", action="store_true", help="smoke run: " + json.dumps(QUICK))
    ap.add_argument("--base", default=None, help="HF model folder (default: models/base, else the GGUF default converted)")
    ap.add_argument("--out", default=None, help="default bench/results/lift.json; with --quick a temp file")
    args = ap.parse_args()
    if args.quick:  # what the command line sets wins over the smoke-run sizes
        for k, v in QUICK.items():
            if getattr(args, k, None) is None:
                setattr(args, k, v)
    args.fractions = args.fractions or [0.25, 0.5, 1.0]
    if not all(0 < f <= 1 for f in args.fractions):
        ap.error("--fractions: each in (0, 1]")
    if max(args.fractions) != 1.0:
        print("note: no --fractions 1.0: the 'tuned' figures are the largest fraction's", file=sys.stderr)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-lift-") as tmp:
        work = Path(tmp)
        train_update = {"val_ratio": 0, "save_steps": 10**9, "checkpoint_dir": str(work / "ckpt"), "threads": args.threads}
        for key in ("epochs", "max_steps", "max_length", "batch_size"):
            if getattr(args, key, None) is not None:
                train_update[key] = getattr(args, key)
        infer_update = {"threads": args.threads}
        for key, field in (("k", "k"), ("engine", "engine"), ("max_new_tokens", "max_new_tokens")):
            if getattr(args, key, None) is not None:
                infer_update[field] = getattr(args, key)
        params = defaults.model_copy(update={"train": defaults.train.model_copy(update=train_update),
                                             "infer": defaults.infer.model_copy(update=infer_update)})
        compute = hardware.compute_dtype(params.compute.dtype)
        base = base_dir(args.base, work)
        scorer = Scorer()
        path = args.out or (str(Path(tempfile.gettempdir()) / "lift-quick.json") if args.quick else str(ROOT / "bench/results/lift.json"))
        tasks = {}
        for t in args.tasks:  # written after each task: a long run stopped half-way keeps what it measured
            tasks[t] = run_task(t, args=args, params=params, base=base, work=work, compute=compute, scorer=scorer)
            out = {"model": params.model.base, "quick": args.quick, "complete": len(tasks) == len(args.tasks), "tasks": tasks,
                   "train": params.train.model_dump(exclude={"checkpoint_dir", "save_steps"}),
                   "infer": params.infer.model_dump(), "data": params.data.model_dump(),
                   "bootstrap": {"resamples": params.judge.bootstrap, "seed": params.judge.seed},
                   "compute": compute, "machine": hardware.describe(), "wall_s": round(time.perf_counter() - start, 1)}
            write_json(path, out)
    print(json.dumps({t: {k: v for k, v in r.items() if k.startswith("rouge_l")} for t, r in tasks.items()}, indent=1))
    print(f"wrote {path} ({out['wall_s']} s)")


if __name__ == "__main__":
    main()
