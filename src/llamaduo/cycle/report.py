"""Report: one summary of the cycle, the pass/fail line against epsilon, and the tables `dvc plots` draws."""

from __future__ import annotations

import json
from pathlib import Path

from llamaduo.cycle.gate import decide, figures
from llamaduo.judging.scores import answer_scores, select


def _load(path: str) -> dict:
    return json.loads(Path(path).read_text())


def summary(*, prepare: str, curate: str, train: str, infer: str, eval: str, champion: str, p) -> dict:
    """`p` is the gate section: the mean of `p.metric` (a judge metric, or a reference metric from eval.json's
    `reference`) against `p.threshold` and (`p.no_regression`) against the champion's interval in `champion`
    (metrics/champion.json, `{}` when there is none). The loop promotes on exactly this decision."""
    ev, tr = _load(eval), _load(train)
    gated = figures(ev, p.metric)
    score = gated["mean"]
    # the interval as the judge stage computed it (judge.bootstrap, judge.seed)
    low, high = gated.get("ci95_low"), gated.get("ci95_high")
    ci = [low, high] if low is not None else None
    passed, reason = decide({"score": score}, _load(champion), p)
    return {
        "split": _load(prepare),
        "synthetic_curated": _load(curate)["rows_out"],
        "train_rows": tr["rows"],
        "train_loss": tr["train_loss"],
        "infer_tokens_per_s": _load(infer)["tokens_per_s"],
        "precision": ev["precision"],
        "similarity": ev["similarity"],
        "failed_judgments": ev["failed_judgments"],
        # the reference metrics' figures (mean, interval) beside the judge's; absent from an older eval.json
        **({"reference": {m: ev["reference"][m] for m in ev["reference"]["metrics"]}} if "reference" in ev else {}),
        "gate": {"metric": p.metric, "threshold": p.threshold, "score": score, "ci95": ci, "passed": passed,
                 "reason": reason},
    }


def score_points(judgments: list[dict]) -> list[dict]:
    """One point per answer: its mean precision and similarity (the paper's Figure 3 axes), by the primary judge."""
    judgments = _primary(judgments)
    prec, sim = answer_scores(judgments, "precision"), answer_scores(judgments, "similarity")
    return [{"prompt_id": k[0], "sample": k[1], "precision": prec[k], "similarity": sim[k]} for k in sorted(prec)]


def _primary(judgments: list[dict]) -> list[dict]:
    """The primary judge's rows (judgments.parquet holds every judge of the panel)."""
    return select(judgments, primary=True)
