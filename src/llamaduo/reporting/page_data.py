"""What metrics/report.html shows, read from whatever the pipeline and the loop have written so far and shaped into
plain structures: the summary and its gate, score against synthetic volume per judge and metric (metrics/history.json),
this cycle's judge and reference figures (metrics/eval.json), precision and similarity per answer
(metrics/plots/scores.json), the cost report (metrics/cost.json), the worst answers (metrics/worst.json), local
beside service answers for a sample of test prompts (data/), and the last capture of recorded traffic
(metrics/capture.json, which `llamaduo capture` writes). A file not written yet leaves its part empty (None, or
an empty list or dict), and the page says what writes it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llamaduo import tables
from llamaduo.reporting.gate import JUDGE_METRICS
from llamaduo.reporting.summary import judge_figures

# how many test prompts get their local and service answers side by side (the page stays readable; the full
# tables are in data/eval/)
SAMPLE_PROMPTS = 5
# answer text longer than this is cut in the side-by-side view (worst.json already holds excerpts)
EXCERPT = 1200

# (judge, metric) -> [(volume, mean, ci95 low, ci95 high)], by volume
Series = dict[tuple[str, str], list[tuple[int, float, float | None, float | None]]]


@dataclass(frozen=True)
class JudgeTable:
    """This cycle's figures per judge and metric: each row holds judge, metric, mean, ci95_low, ci95_high,
    `coverage` (one value per level in `zetas`, None where that judge has none) and p_match."""

    zetas: list[str]
    rows: list[dict]
    answers: int | None
    m: int | None


@dataclass(frozen=True)
class ReferenceTable:
    """The reference metrics of the local model's and each service's answers: rows of answerer, metric, mean,
    ci95_low, ci95_high; `p_match` (metric -> local over the best service's mean) is None without a baseline."""

    metrics: list[str]
    rows: list[dict]
    p_match: dict[str, float | None] | None


@dataclass(frozen=True)
class SideBySide:
    """A fixed sample of test prompts: each row's instruction, reference, the local model's sample 0 and each of
    `services`' answers (in that order), cut to EXCERPT characters."""

    services: list[str]
    rows: list[dict]


@dataclass(frozen=True)
class PageData:
    metrics_dir: Path
    data_dir: Path
    summary: dict
    history: list[dict]
    series: Series
    judges: JudgeTable | None
    points: list[dict]
    reference: ReferenceTable | None
    cost: dict | None
    worst: list[dict] | None
    answers: SideBySide | None
    capture: dict | None = None


def load(metrics_dir: str | Path = "metrics", data_dir: str | Path = "data") -> PageData:
    """Everything the page shows, from what exists under `metrics_dir` and `data_dir`."""
    m, d = Path(metrics_dir), Path(data_dir)
    ev, history = _json(m / "eval.json", {}), _json(m / "history.json", [])
    return PageData(
        metrics_dir=m, data_dir=d, summary=_json(m / "summary.json", {}), history=history,
        series=history_series(history), judges=judge_table(ev), points=_json(m / "plots" / "scores.json", []),
        reference=reference_table(ev), cost=_json(m / "cost.json", None) or None, worst=_json(m / "worst.json", None),
        answers=side_by_side(d), capture=_json(m / "capture.json", None),
    )


def _json(path: Path, default):
    return json.loads(path.read_text()) if path.is_file() else default


def _table(path: Path, name: str) -> list[dict]:
    return tables.read(path, name) if path.is_file() else []


def history_series(history: list[dict]) -> Series:
    """A cycle entry may carry every judge's figures under `judges` (`summary.judge_figures`, the headline's
    `judge` block); an entry without it has the primary judge's means, with the interval for the gate's metric
    only."""
    series: dict = {}
    for h in sorted(history, key=lambda h: (h.get("volume", 0), h.get("cycle", 0))):
        judges = h.get("judges")
        if not judges:
            judges = {h.get("judge", "judge"): {
                m: {"mean": h.get(m), **({"ci95_low": h["ci95"][0], "ci95_high": h["ci95"][1]}
                                         if h.get("metric") == m and h.get("ci95") else {})}
                for m in JUDGE_METRICS}}
        for judge, figs in judges.items():
            for metric in JUDGE_METRICS:
                f = figs.get(metric) or {}
                if f.get("mean") is not None:
                    series.setdefault((judge, metric), []).append(
                        (h.get("volume", 0), f["mean"], f.get("ci95_low"), f.get("ci95_high")))
    return series


def judge_table(ev: dict) -> JudgeTable | None:
    """eval.json's figures per judge and metric, with every coverage level any of them holds (by zeta)."""
    judges = judge_figures(ev)
    if not judges:
        return None
    keys = sorted({k for e in judges.values() for f in e.values() for k in f if k.startswith("coverage_")},
                  key=lambda k: int(k.split("_")[1]))
    rows = [{"judge": judge, "metric": m, "mean": f.get("mean"), "ci95_low": f.get("ci95_low"), "ci95_high": f.get("ci95_high"),
             "coverage": [f.get(k) for k in keys], "p_match": f.get("p_match")}
            for judge, e in judges.items() for m, f in e.items()]
    return JudgeTable(zetas=[k.split("_")[1] for k in keys], rows=rows, answers=ev.get("answers"), m=ev.get("m"))


def reference_table(ev: dict) -> ReferenceTable | None:
    ref = ev.get("reference")
    if not ref:
        return None
    answerers = {"local": ref, **(ref.get("services") or {})}
    rows = [{"answerer": who, "metric": m, "mean": (f := figs.get(m) or {}).get("mean"), "ci95_low": f.get("ci95_low"),
             "ci95_high": f.get("ci95_high")} for who, figs in answerers.items() for m in ref["metrics"]]
    pm = ref.get("p_match") or {}
    p_match = {m: (pm.get(m) or {}).get("mean") for m in ref["metrics"]} if pm else None
    return ReferenceTable(metrics=ref["metrics"], rows=rows, p_match=p_match)


def _cut(text: str) -> str:
    return text if len(text) <= EXCERPT else text[:EXCERPT] + " …"


def side_by_side(data: Path) -> SideBySide | None:
    """The first SAMPLE_PROMPTS test prompts by id that have local answers (a fixed sample, so two cycles' reports
    show the same prompts); None before the infer stage."""
    local = _table(data / "eval" / "responses.parquet", "responses")
    if not local:
        return None
    service = _table(data / "eval" / "baseline_responses.parquet", "baseline_responses")
    test = {r["id"]: r for r in _table(data / "prepared" / "test.parquet", "split")}
    services = sorted({s["service"] for s in service})
    prompts = sorted({r["prompt_id"] for r in local})[:SAMPLE_PROMPTS]
    first = lambda rows, pid: min((r for r in rows if r["prompt_id"] == pid), key=lambda r: r["sample"], default=None)  # noqa: E731
    rows = []
    for pid in prompts:
        row = test.get(pid, {})
        rows.append({
            "instruction": _cut(row.get("instruction", f"(prompt {pid}: not in the test split)")),
            "reference": _cut(row.get("response", "")),
            "local": _cut((first(local, pid) or {}).get("answer", "")),
            "services": [_cut((first([s for s in service if s["service"] == name], pid) or {}).get("answer", "(no answer)"))
                         for name in services],
        })
    return SideBySide(services=services, rows=rows)
