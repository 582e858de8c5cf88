"""A small synthetic project output (metrics/ and data/) for the report tests: a two-judge panel, a service
baseline, three loop cycles, a cost report, and answers holding markup (model output is untrusted)."""

from __future__ import annotations

import json
from pathlib import Path

from llamaduo import tables
from llamaduo.config import CostParams, GateParams, PriceParams
from llamaduo.cycle.cost import report as cost_report
from llamaduo.reporting.summary import headline, summary, usage

HOSTILE = "<script>alert('pwned')</script><img src=x onerror=alert(1)>"


def _figs(mean, low, high, c50, c70):
    return {"mean": mean, "ci95_low": low, "ci95_high": high, "median": mean, "coverage_50": c50, "coverage_70": c70,
            "scored_answers": 6}


def _judge(prec, sim, pm):
    return {"precision": _figs(*prec), "similarity": _figs(*sim), "answers": 6, "failed_judgments": 0,
            "p_match": {"precision": {"mean": pm, "coverage_50": 0.9}, "similarity": {"mean": pm - 0.1}},
            "repeat_sd": {"precision": 3.0, "similarity": 4.0}, "usage": {"calls": 6, "cost_usd": 0.01}}


def eval_json() -> dict:
    j1 = _judge((62.5, 55.0, 70.0, 0.67, 0.33), (48.0, 40.0, 56.0, 0.5, 0.17), 0.91)
    j2 = _judge((58.0, 50.0, 66.0, 0.5, 0.33), (45.0, 37.5, 52.0, 0.33, 0.0), 0.87)
    ref = {"metrics": ["rouge_l", "chrf", "exact_match"], "answers": 6,
           "rouge_l": _figs(31.2, 25.0, 37.0, None, None), "chrf": _figs(44.4, 39.0, 50.0, None, None),
           "exact_match": _figs(16.7, 0.0, 33.3, None, None),
           "services": {"gpt-svc": {"rouge_l": {"mean": 35.0}, "chrf": {"mean": 49.0}, "exact_match": {"mean": 16.7}}},
           "p_match": {"rouge_l": {"mean": 0.89}, "chrf": {"mean": 0.91}, "exact_match": {"mean": 1.0}}}
    top = {k: v for k, v in j1.items() if k != "usage"}
    return {"judge": "j1", "judges": ["j1", "j2"], "m": 3, **top, "answers": 6, "judgments": 36, "scored_fraction": 0.97,
            "per_judge": {"j1": j1, "j2": j2}, "reference": ref,
            "usage": {"j1": {"calls": 6, "cached": 0, "cost_usd": 0.01}, "j2": {"calls": 6, "cached": 1, "cost_usd": 0.02}}}


HISTORY = [
    {"cycle": 0, "volume": 0, "metric": "precision", "score": 40.0, "ci95": [33.0, 47.0], "precision": 40.0,
     "similarity": 30.0, "judge": "j1", "calls": 20, "cost_usd": 0.05, "synthetic_curated": 0, "train_rows": 12},
    {"cycle": 1, "volume": 50, "metric": "precision", "score": 52.0, "ci95": [45.0, 59.0], "precision": 52.0,
     "similarity": 41.0, "judge": "j1", "calls": 35, "cost_usd": 0.09, "synthetic_curated": 44, "train_rows": 56},
    # a cycle that recorded every judge's figures (the headline's `judge` block)
    {"cycle": 2, "volume": 100, "metric": "precision", "score": 62.5, "ci95": [55.0, 70.0], "precision": 62.5,
     "similarity": 48.0, "judge": "j1", "calls": 50, "cost_usd": 0.12, "synthetic_curated": 90, "train_rows": 102,
     "judges": {"j1": {"precision": {"mean": 62.5, "ci95_low": 55.0, "ci95_high": 70.0},
                       "similarity": {"mean": 48.0, "ci95_low": 40.0, "ci95_high": 56.0}},
                "j2": {"precision": {"mean": 58.0, "ci95_low": 50.0, "ci95_high": 66.0},
                       "similarity": {"mean": 45.0, "ci95_low": 37.5, "ci95_high": 52.0}}}},
]

PROMPTS = [f"p{i}" for i in range(7)]


def write_project_outputs(root: Path, *, history: list | None = None) -> dict:
    """metrics/ and data/ under `root` as the stages and the loop write them; returns the headline."""
    m, d = root / "metrics", root / "data"
    (m / "plots").mkdir(parents=True, exist_ok=True)
    files = {
        "prepare": {"summarize": {"train": 12, "test": len(PROMPTS)}},
        "curate": {"rows_in": 100, "rows_out": 90, "dropped": {"refusal": 10}},
        "train": {"rows": 102, "train_loss": 1.25, "val_loss": 1.5, "tokens_per_s": 100.0, "wall_s": 30.0},
        "infer": {"tokens_per_s": 80.5, "answers": 14, "latency_median_s": 3.2},
        "eval": eval_json(),
        "champion": {},
        "synthesize": {"requests": 10, "usage": {"calls": 10, "cached": 2, "cost_usd": 0.05, "input_tokens": 900}},
        "baseline": {"services": {"gpt-svc": {"answers": 7}},
                     "usage": {"answers": {"gpt-svc": {"calls": 7, "cost_usd": 0.004, "input_tokens": 700, "output_tokens": 350}},
                               "judging": {"j1": {"calls": 7, "cost_usd": 0.001}}}},
        "merge": {"method": None},
        "worst": [{"prompt_id": "p3", "sample": 1, "precision": 5.0, "similarity": 10.0,
                   "reasons": [f"the answer injects markup: {HOSTILE}", "misses the point"],
                   "instruction": "Summarize the memo about room changes.", "answer": f"Room {HOSTILE} changed."}],
    }
    for name, body in files.items():
        (m / f"{name}.json").write_text(json.dumps(body))
    p = {n: str(m / f"{n}.json") for n in ("prepare", "curate", "train", "infer", "eval", "champion")}
    s = summary(**p, p=GateParams(mode="point", threshold=60))
    (m / "summary.json").write_text(json.dumps(s))
    head = headline(s, eval=files["eval"], train=files["train"],
                    spend=usage([files["synthesize"], files["baseline"], files["eval"]]))
    (m / "headline.json").write_text(json.dumps(head))
    (m / "plots" / "scores.json").write_text(json.dumps(
        [{"prompt_id": pid, "sample": k, "precision": 10.0 * i + k, "similarity": 8.0 * i + 2 * k}
         for i, pid in enumerate(PROMPTS) for k in range(2)]))
    (m / "plots" / "loss.json").write_text(json.dumps([{"step": i, "loss": 2.0 - 0.1 * i} for i in range(1, 6)]))
    (m / "history.json").write_text(json.dumps(HISTORY if history is None else history))
    rep = cost_report(input_tokens_per_request=100, output_tokens_per_request=50,
                      price=PriceParams(input_per_mtok=2.5, output_per_mtok=10), loop_cost_usd=0.26,
                      p=CostParams(requests_per_month=100_000, min_gpu_hours_per_month=100, horizon_months=12))
    (m / "cost.json").write_text(json.dumps(rep | {"service": "gpt-svc"}))

    (d / "eval").mkdir(parents=True, exist_ok=True)
    (d / "prepared").mkdir(parents=True, exist_ok=True)
    tables.write(d / "prepared" / "test.parquet", "split", [
        {"id": pid, "task": "summarize", "instruction": f"Summarize note {pid}.", "response": f"Reference for {pid}.",
         "system": None, "history": None, "category": None, "split": "test"} for pid in PROMPTS])
    tables.write(d / "eval" / "responses.parquet", "responses", [
        {"prompt_id": pid, "task": "summarize", "sample": k, "answer": f"local answer {pid}/{k}" + (HOSTILE if pid == "p0" else ""),
         "tokens": 5, "finish_reason": "stop", "engine": "vllm", "latency_s": 1.0} for pid in PROMPTS for k in (1, 0)])
    tables.write(d / "eval" / "baseline_responses.parquet", "baseline_responses", [
        {"service": "gpt-svc", "service_model": "gpt-x", "served_model": None, "prompt_id": pid, "task": "summarize",
         "sample": 0, "answer": f"service answer {pid}", "tokens": 6, "finish_reason": "stop"} for pid in PROMPTS])
    return head
