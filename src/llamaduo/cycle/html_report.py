"""metrics/report.html: one self-contained page a person opens to see where the migration stands.

It reads whatever the pipeline and the loop have written so far and draws the paper's views of it: score against
synthetic volume per judge and metric (Figure 2, from metrics/history.json), precision against similarity per
answer (Figure 3, metrics/plots/scores.json), the reference metrics, the gate's decision and its reason, the cost
curves and break-even (Table 2 / Figure 4, metrics/cost.json), the worst answers with the judge's reasons, and
local against service answers for a sample of test prompts. A missing file leaves its section saying what writes
it, so the page is useful after one stage as after ten cycles.

Figures are matplotlib PNGs inlined as base64 and the CSS is inline: the file opens offline, from an e-mail or a
CI artifact, with no server. Every piece of text from the data (answers, instructions, judge reasons, names) goes
through `html.escape`: answers are model output, not markup.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import UTC, datetime
from pathlib import Path

from llamaduo import tables
from llamaduo.atomic import replacing

# how many test prompts get their local and service answers side by side (the page stays readable; the full
# tables are in data/eval/)
SAMPLE_PROMPTS = 5
# answer text longer than this is cut in the side-by-side view (worst.json already holds excerpts)
EXCERPT = 1200
METRICS = ("precision", "similarity")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;
color:#1d1d1f;background:#fff;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
h3{font-size:1.05rem;margin:.4rem 0}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}th,td{border:1px solid #ccc;padding:.25rem .5rem;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
.gate{padding:.6rem 1rem;border-radius:6px;font-weight:600}.pass{background:#e3f6e5;border:1px solid #3a9d4a}
.fail{background:#fdeaea;border:1px solid #c43c3c}.missing{color:#666;font-style:italic}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-family:inherit}.muted{color:#666;font-size:.85rem}
"""


def write(out: str | Path = "metrics/report.html", metrics_dir: str | Path = "metrics",
          data_dir: str | Path = "data") -> Path:
    """Write the report from what exists under `metrics_dir` and `data_dir` (atomically); return its path."""
    m, d = Path(metrics_dir), Path(data_dir)
    summary, ev = _json(m / "summary.json", {}), _json(m / "eval.json", {})
    body = [
        _gate_section(summary),
        _volume_section(_json(m / "history.json", [])),
        _judge_section(ev),
        _scores_section(_json(m / "plots" / "scores.json", [])),
        _reference_section(ev),
        _cost_section(_json(m / "cost.json", None)),
        _worst_section(_json(m / "worst.json", None)),
        _side_by_side_section(d),
    ]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>LlamaDuo report</title><style>{_CSS}</style></head><body>"
            f"<h1>LlamaDuo migration report</h1><p class=\"muted\">written {stamp} from {_e(m)}/ and {_e(d)}/</p>"
            + "\n".join(body) + "</body></html>\n")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
        # the temp file is created 0600; a page is for people to open (a CI artifact, a shared folder)
        Path(tmp).chmod(0o644)
    return out


# --- reading -----------------------------------------------------------------------------------------------------

def _json(path: Path, default):
    return json.loads(path.read_text()) if path.is_file() else default


def _table(path: Path, name: str) -> list[dict]:
    return tables.read(path, name) if path.is_file() else []


# --- HTML pieces -------------------------------------------------------------------------------------------------

def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(v, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return _e(v)
    if isinstance(v, float) and v and abs(v) < 0.01:  # prices per request: fixed digits would read 0.00
        return f"{v:.3g}"
    return f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}"


def _section(title: str, inner: str, anchor: str) -> str:
    return f"<section id=\"{anchor}\"><h2>{_e(title)}</h2>{inner}</section>"


def _missing(text: str) -> str:
    """A section's placeholder; `text` is ours (it may hold <code>), never data."""
    return f"<p class=\"missing\">{text}</p>"


def _rows(header: list[str], rows: list[list], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class=\"num\">{_num(c)}</td>" if i >= numeric_from else f"<td>{_e(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(fig, title: str) -> str:
    """A matplotlib figure as an inline PNG, under a caption that carries the same title (what a reader and the
    test find in the DOM; the PNG's own title is pixels)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f"<figure><figcaption><h3 class=\"figure-title\">{_e(title)}</h3></figcaption>"
            f"<img alt=\"{_e(title)}\" src=\"data:image/png;base64,{data}\"></figure>")


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display: the report is written by stages and by the loop in a terminal
    import matplotlib.pyplot as plt

    return plt


# --- sections ----------------------------------------------------------------------------------------------------

def _gate_section(summary: dict) -> str:
    g = summary.get("gate")
    if not g:
        return _section("Promotion gate", _missing("no summary yet: run <code>dvc repro report</code> "
                                                   "(or <code>llamaduo run</code>)"), "gate")
    ci = g.get("ci95")
    ci_text = f" (95% interval {_num(ci[0])} – {_num(ci[1])})" if ci else ""
    verdict = "PASS: this cycle's model may replace the service" if g["passed"] else "not passed"
    inner = (f"<p class=\"gate {'pass' if g['passed'] else 'fail'}\">{_e(verdict)}</p>"
             f"<p>Gate metric <b>{_e(g['metric'])}</b>: {_num(g.get('score'))}{ci_text}, threshold "
             f"{_num(g.get('threshold'))}, scored share {_num(g.get('scored_fraction'))}.<br>"
             f"Why: {_e(g.get('reason', ''))}</p>")
    facts = [["training rows", summary.get("train_rows")], ["synthetic rows (curated)", summary.get("synthetic_curated")],
             ["training loss", summary.get("train_loss")], ["failed judgments", summary.get("failed_judgments")]]
    return _section("Promotion gate", inner + _rows(["", "value"], [f for f in facts if f[1] is not None]), "gate")


def _history_series(history: list[dict]) -> dict[tuple[str, str], list[tuple[int, float, float | None, float | None]]]:
    """(judge, metric) -> [(volume, mean, low, high)]. A cycle entry may carry every judge's figures under
    `judges` ({judge: {metric: {mean, ci95_low, ci95_high}}}, the headline's `judge` block); an entry without it
    has the primary judge's means, with the interval for the gate's metric only."""
    series: dict = {}
    for h in sorted(history, key=lambda h: (h.get("volume", 0), h.get("cycle", 0))):
        judges = h.get("judges")
        if not judges:
            judges = {h.get("judge", "judge"): {
                m: {"mean": h.get(m), **({"ci95_low": h["ci95"][0], "ci95_high": h["ci95"][1]}
                                         if h.get("metric") == m and h.get("ci95") else {})}
                for m in METRICS}}
        for judge, figs in judges.items():
            for metric in METRICS:
                f = figs.get(metric) or {}
                if f.get("mean") is not None:
                    series.setdefault((judge, metric), []).append(
                        (h.get("volume", 0), f["mean"], f.get("ci95_low"), f.get("ci95_high")))
    return series


def _volume_section(history: list[dict]) -> str:
    title = "Judge score against synthetic volume"
    series = _history_series(history)
    if not series:
        return _section("Cycles", _missing("no history yet: run <code>llamaduo loop</code> (each cycle adds a point "
                                        "to metrics/history.json)"), "volume")
    plt = _plt()
    fig, axes = plt.subplots(1, len(METRICS), figsize=(11, 4), sharey=True)
    for ax, metric in zip(axes, METRICS):
        for (judge, m), pts in sorted(series.items()):
            if m != metric:
                continue
            (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=judge)
            ci = [p for p in pts if p[2] is not None]
            if ci:  # the bootstrap 95% interval of the mean, where the cycle recorded it (bars: one cycle has one)
                ax.errorbar([p[0] for p in ci], [p[1] for p in ci], yerr=[[p[1] - p[2] for p in ci], [p[3] - p[1] for p in ci]],
                            fmt="none", ecolor=line.get_color(), capsize=4)
        ax.set_title(f"{metric} (mean, 95% interval)")
        ax.set_xlabel("synthetic volume (rows requested)")
        positive = sorted({p[0] for pts in series.values() for p in pts if p[0] > 0})
        if positive and positive[-1] >= 8 * positive[0]:
            # the loop doubles the volume (1k ... 256k): on a linear axis every early cycle sits at 0; symlog also
            # keeps cycle 0's volume 0, which a log axis cannot show
            ax.set_xscale("symlog", linthresh=positive[0])
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(title="judge", fontsize=8)
    axes[0].set_ylabel("judge score (0-100)")
    fig.suptitle(title)
    fig.tight_layout()
    table = _rows(["cycle", "volume", "metric", "score", "95% low", "95% high", "paid calls", "cost (USD)"],
                  [[h.get("cycle"), h.get("volume"), h.get("metric"), h.get("score"), *(h.get("ci95") or [None, None]),
                    h.get("calls"), h.get("cost_usd")] for h in history], numeric_from=3)
    return _section("Cycles", _figure(fig, title) + table, "volume")


def _judges_of(ev: dict) -> dict[str, dict]:
    """Each judge's figures in eval.json: `per_judge` for a panel, else the primary judge's at the top level."""
    return ev.get("per_judge") or ({ev["judge"]: ev} if "judge" in ev else {})


def _judge_section(ev: dict) -> str:
    title = "Judge scores of this cycle"
    judges = _judges_of(ev)
    if not judges:
        return _section(title, _missing("no judgments yet: run <code>dvc repro judge</code>"), "judges")
    zetas = sorted({k for e in judges.values() for m in METRICS for k in (e.get(m) or {}) if k.startswith("coverage_")},
                   key=lambda k: int(k.split("_")[1]))
    rows = []
    for judge, e in judges.items():
        for m in METRICS:
            f = e.get(m) or {}
            pm = ((e.get("p_match") or {}).get(m) or {}).get("mean")
            rows.append([judge, m, f.get("mean"), f.get("ci95_low"), f.get("ci95_high"), *(f.get(z) for z in zetas), pm])
    header = ["judge", "metric", "mean", "95% low", "95% high", *(f"coverage ≥{z.split('_')[1]}" for z in zetas),
              "P-Match (mean)"]
    note = (f"<p class=\"muted\">{_num(ev.get('answers'))} answers, M = {_num(ev.get('m'))} judgments each; "
            f"P-Match: the local model's mean over the best service's (1.0 = on par).</p>")
    return _section(title, _rows(header, rows, numeric_from=2) + note, "judges")


def _scores_section(points: list[dict]) -> str:
    title = "Precision against similarity per answer"
    if not points:
        return _section("Per-answer scores", _missing("no per-answer scores yet: run <code>dvc repro report</code> "
                                        "(metrics/plots/scores.json)"), "scores")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter([p["similarity"] for p in points], [p["precision"] for p in points], alpha=0.6, s=18)
    ax.set_xlabel("similarity (mean of M judgments)")
    ax.set_ylabel("precision (mean of M judgments)")
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    return _section("Per-answer scores", _figure(fig, title) + f"<p class=\"muted\">{len(points)} answers, primary judge.</p>", "scores")


def _reference_section(ev: dict) -> str:
    title = "Reference metrics"
    ref = ev.get("reference")
    if not ref:
        return _section(title, _missing("no reference metrics in metrics/eval.json: run <code>dvc repro judge</code>"),
                        "reference")
    answerers = {"local": ref, **(ref.get("services") or {})}
    rows = [[who, m, (f := figs.get(m) or {}).get("mean"), f.get("ci95_low"), f.get("ci95_high")]
            for who, figs in answerers.items() for m in ref["metrics"]]
    pm = ref.get("p_match") or {}
    extra = ("<p class=\"muted\">P-Match (local / best service): "
             + ", ".join(f"{_e(m)} {_num((pm.get(m) or {}).get('mean'))}" for m in ref["metrics"]) + "</p>") if pm else ""
    return _section(title, _rows(["answerer", "metric", "mean", "95% low", "95% high"], rows, numeric_from=2) + extra,
                    "reference")


def _cost_section(rep: dict | None) -> str:
    title = "Cumulative cost and break-even"
    if not rep:
        return _section("Cost", _missing("no cost report yet: run <code>llamaduo cost</code> (or <code>llamaduo loop</code>, "
                                        "which writes metrics/cost.json after each cycle)"), "cost")
    plt = _plt()
    months = [c["month"] for c in rep["curve"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(months, [c["service_usd"] for c in rep["curve"]], label=f"service LLM ({rep.get('service', 'service')})")
    ax.plot(months, [c["local_usd"] for c in rep["curve"]], label="local model (incl. migration)")
    if rep.get("break_even_month"):
        ax.axvline(rep["break_even_month"], ls="--", c="grey", label=f"break-even: month {rep['break_even_month']}")
    ax.set_xlabel("month")
    ax.set_ylabel("cumulative cost (USD)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    table = _rows(["", "service LLM", "local model"], [
        ["USD per request", rep.get("service_usd_per_request"), rep.get("local_usd_per_request")],
        ["USD per month", rep.get("service_usd_per_month"), rep.get("local_usd_per_month")],
        ["migration (loop's service calls + training GPU)", None, rep.get("migration_cost_usd")],
        ["tokens per request (input / output)",
         f"{_num(rep.get('input_tokens_per_request'), 1)} / {_num(rep.get('output_tokens_per_request'), 1)}", None],
    ])
    be = rep.get("break_even_month")
    verdict = f"break-even in month {be}" if be else f"no break-even within {len(months)} months"
    return _section("Cost", _figure(fig, title) + table + f"<p><b>{_e(verdict)}</b></p>", "cost")


def _worst_section(worst: list[dict] | None) -> str:
    title = "Worst answers and the judge's reasons"
    if worst is None:
        return _section(title, _missing("no worst answers yet: run <code>dvc repro judge</code> (metrics/worst.json)"), "worst")
    if not worst:
        return _section(title, _missing("none listed (<code>judge.worst</code> is 0)"), "worst")
    rows = "".join(
        f"<tr><td class=\"num\">{_num(w.get('precision'))}</td><td class=\"num\">{_num(w.get('similarity'))}</td>"
        f"<td><pre>{_e(w.get('instruction', ''))}</pre></td><td><pre>{_e(w.get('answer', ''))}</pre></td>"
        f"<td><ul>{''.join(f'<li>{_e(r)}</li>' for r in w.get('reasons', []))}</ul></td></tr>" for w in worst)
    head = "<tr><th>precision</th><th>similarity</th><th>instruction</th><th>local answer</th><th>judge's reasons</th></tr>"
    return _section(title, f"<table><thead>{head}</thead><tbody>{rows}</tbody></table>", "worst")


def _cut(text: str) -> str:
    return text if len(text) <= EXCERPT else text[:EXCERPT] + " …"


def _side_by_side_section(data: Path) -> str:
    title = "Local and service answers side by side"
    local = _table(data / "eval" / "responses.parquet", "responses")
    if not local:
        return _section(title, _missing("no local answers yet: run <code>dvc repro infer</code>"), "answers")
    service = _table(data / "eval" / "baseline_responses.parquet", "baseline_responses")
    test = {r["id"]: r for r in _table(data / "prepared" / "test.parquet", "split")}
    services = sorted({s["service"] for s in service})
    # the first prompts by id: a fixed sample, so two cycles' reports show the same prompts
    prompts = sorted({r["prompt_id"] for r in local})[:SAMPLE_PROMPTS]
    first = lambda rows, pid: min((r for r in rows if r["prompt_id"] == pid), key=lambda r: r["sample"], default=None)  # noqa: E731
    head = "<th>instruction</th><th>reference</th><th>local (sample 0)</th>" + "".join(
        f"<th>{_e(s)} (service)</th>" for s in services)
    rows = []
    for pid in prompts:
        row = test.get(pid, {})
        cells = [row.get("instruction", f"(prompt {pid}: not in the test split)"), row.get("response", ""),
                 (first(local, pid) or {}).get("answer", "")]
        cells += [(first([s for s in service if s["service"] == name], pid) or {}).get("answer", "(no answer)")
                  for name in services]
        rows.append("<tr>" + "".join(f"<td><pre>{_e(_cut(c))}</pre></td>" for c in cells) + "</tr>")
    note = "" if services else _missing("no service answers: set <code>judge.baseline.services</code> and run "
                                        "<code>dvc repro baseline</code>")
    return _section(title, f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>" + note, "answers")
