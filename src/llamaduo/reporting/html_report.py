"""metrics/report.html: one self-contained page a person opens to see where the migration stands, rendered from
`page_data.load` (what the pipeline and the loop have written so far). It draws the paper's views: score against
synthetic volume per judge and metric (Figure 2), precision against similarity per answer (Figure 3), the
reference metrics, the gate's decision and its reason, the cost curves and break-even (Table 2 / Figure 4), the
worst answers with the judge's reasons, local against service answers for a sample of test prompts, and the last
capture of recorded traffic with links to its traces in the MLflow UI. A part
with no data yet leaves its section saying what writes it, so the page is useful after one stage as after ten cycles.

Figures are PNGs (`plots`) inlined as base64 and the CSS is inline: the file opens offline, from an e-mail or a CI
artifact, with no server. Every piece of text from the data (answers, instructions, judge reasons, names) goes
through `html.escape`: answers are model output, not markup.
"""

from __future__ import annotations

import base64
import html
from datetime import UTC, datetime
from pathlib import Path

from llamaduo.atomic import replacing
from llamaduo.reporting import plots
from llamaduo.reporting.page_data import JudgeTable, PageData, ReferenceTable, Series, SideBySide

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;
color:#1d1d1f;background:#fff;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
h3{font-size:1.05rem;margin:.4rem 0}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}th,td{border:1px solid #ccc;padding:.25rem .5rem;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
.gate{padding:.6rem 1rem;border-radius:6px;font-weight:600}.pass{background:#e3f6e5;border:1px solid #3a9d4a}
.fail{background:#fdeaea;border:1px solid #c43c3c}.missing{color:#666;font-style:italic}.warn{color:#8a5a00}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-family:inherit}.muted{color:#666;font-size:.85rem}
"""


def render(page: PageData) -> str:
    """The page's HTML."""
    body = [
        _gate_section(page.summary),
        _volume_section(page.history, page.series),
        _judge_section(page.judges),
        _scores_section(page.points),
        _reference_section(page.reference),
        _cost_section(page.cost),
        _worst_section(page.worst),
        _side_by_side_section(page.answers),
        _capture_section(page.capture),
    ]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>LlamaDuo report</title><style>{_CSS}</style></head><body>"
            f"<h1>LlamaDuo migration report</h1><p class=\"muted\">written {stamp} from {_e(page.metrics_dir)}/ and "
            f"{_e(page.data_dir)}/</p>" + "\n".join(body) + "</body></html>\n")


def write(out: str | Path, page: PageData) -> Path:
    """Write the page to `out` (atomically); return its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as tmp:
        Path(tmp).write_text(render(page), encoding="utf-8")
        # the temp file is created 0600; a page is for people to open (a CI artifact, a shared folder)
        Path(tmp).chmod(0o644)
    return out


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


def _figure(png: bytes, title: str) -> str:
    """A PNG inline, under a caption that carries the figure's title (what a reader and the test find in the DOM;
    the PNG's own title is pixels)."""
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure><figcaption><h3 class=\"figure-title\">{_e(title)}</h3></figcaption>"
            f"<img alt=\"{_e(title)}\" src=\"data:image/png;base64,{data}\"></figure>")


# --- sections ----------------------------------------------------------------------------------------------------

def _gate_section(summary: dict) -> str:
    g = summary.get("gate")
    if not g:
        return _section("Promotion gate", _missing("no summary yet: run <code>dvc repro report</code> "
                                                   "(or <code>llamaduo run</code>)"), "gate")
    ci = g.get("ci95")
    ci_text = f" (95% interval {_num(ci[0])} – {_num(ci[1])})" if ci else ""
    verdict = "PASS: this cycle's model may replace the service" if g["passed"] else "not passed"
    test = g.get("test") or {}
    inner = (f"<p class=\"gate {'pass' if g['passed'] else 'fail'}\">{_e(verdict)}</p>"
             + (f"<p>The question the gate answered ({_e(test['mode'])}): {_e(test['question'])}</p>" if test else "")
             + f"<p>Gate metric <b>{_e(g['metric'])}</b>: {_num(g.get('score'))}{ci_text}, threshold "
             f"{_num(g.get('threshold'))}, scored share {_num(g.get('scored_fraction'))}.<br>"
             f"Why: {_e(g.get('reason', ''))}</p>")
    if g.get("power_warning"):
        inner += f"<p class=\"warn\">Underpowered: {_e(g['power_warning'])}</p>"
    level = f"{100 * (1 - test['alpha']):.4g}%" if test.get("alpha") is not None else None
    seq = summary.get("judging")
    facts = [["tested on", f"{test['prompts']} test prompts" if test.get("prompts") is not None else None],
             ["estimate" + (f" (local - {test['best_service']})" if test.get("best_service") else ""), test.get("estimate")],
             [f"one-sided {level} lower bound (this cycle's share of gate.alpha)" if level else "lower bound",
              test.get("bound") if test.get("mode") != "point" else None],
             ["must be above", test.get("against") if test.get("mode") != "point" else None],
             ["detectable at 80% power", test.get("detectable")],
             ["no regression against the champion", regression_text(g.get("regression"))],
             ["judgments paid / a full pass", f"{seq['judgments_paid']} / {seq['judgments_full']} (saved {100 * seq['saving']:.0f}%)"
              if seq else None],
             ["judging stopped", seq.get("stopped") if seq else None],
             ["training rows", summary.get("train_rows")], ["synthetic rows (curated)", summary.get("synthetic_curated")],
             ["training loss", summary.get("train_loss")], ["failed judgments", summary.get("failed_judgments")]]
    return _section("Promotion gate", inner + _rows(["", "value"], [f for f in facts if f[1] is not None]), "gate")


def regression_text(reg: dict | None) -> str | None:
    """How the candidate was checked against the champion: paired over shared prompts, or unpaired and why."""
    if not reg:
        return None
    if reg["method"] == "paired":
        return (f"paired with v{reg['version']} over {reg['prompts']} prompts: candidate - champion "
                f"{reg['estimate']:+.2f}, lower bound {reg['bound']:.2f}, must be above {reg['against']:g}")
    why = f" ({reg['why']})" if reg.get("why") else ""
    return f"unpaired: the mean against v{reg['version']}'s 95% interval from {_num(reg.get('ci_low'))}{why}"


def _volume_section(history: list[dict], series: Series) -> str:
    title = "Judge score against synthetic volume"
    if not series:
        return _section("Cycles", _missing("no history yet: run <code>llamaduo loop</code> (each cycle adds a point "
                                        "to metrics/history.json)"), "volume")
    # beside what each cycle paid, the pre-flight estimate made before it ran (cycle/estimate.py)
    table = _rows(["cycle", "volume", "metric", "score", "95% low", "95% high", "paid calls", "cost (USD)",
                   "estimated calls", "estimated cost (USD)"],
                  [[h.get("cycle"), h.get("volume"), h.get("metric"), h.get("score"), *(h.get("ci95") or [None, None]),
                    h.get("calls"), h.get("cost_usd"), (h.get("estimate") or {}).get("calls"),
                    (h.get("estimate") or {}).get("usd")] for h in history], numeric_from=3)
    return _section("Cycles", _figure(plots.volume(series, title), title) + table, "volume")


def _judge_section(judges: JudgeTable | None) -> str:
    title = "Judge scores of this cycle"
    if judges is None:
        return _section(title, _missing("no judgments yet: run <code>dvc repro judge</code>"), "judges")
    rows = [[r["judge"], r["metric"], r["mean"], r["ci95_low"], r["ci95_high"], *r["coverage"], r["p_match"]] for r in judges.rows]
    header = ["judge", "metric", "mean", "95% low", "95% high", *(f"coverage ≥{z}" for z in judges.zetas), "P-Match (mean)"]
    note = (f"<p class=\"muted\">{_num(judges.answers)} answers, M = {_num(judges.m)} judgments each; "
            f"P-Match: the local model's mean over the best service's (1.0 = on par).</p>")
    return _section(title, _rows(header, rows, numeric_from=2) + note, "judges")


def _scores_section(points: list[dict]) -> str:
    title = "Precision against similarity per answer"
    if not points:
        return _section("Per-answer scores", _missing("no per-answer scores yet: run <code>dvc repro report</code> "
                                        "(metrics/plots/scores.json)"), "scores")
    return _section("Per-answer scores", _figure(plots.scores(points, title), title)
                    + f"<p class=\"muted\">{len(points)} answers, primary judge.</p>", "scores")


def _reference_section(ref: ReferenceTable | None) -> str:
    title = "Reference metrics"
    if ref is None:
        return _section(title, _missing("no reference metrics in metrics/eval.json: run <code>dvc repro judge</code>"),
                        "reference")
    rows = [[r["answerer"], r["metric"], r["mean"], r["ci95_low"], r["ci95_high"]] for r in ref.rows]
    extra = ("<p class=\"muted\">P-Match (local / best service): "
             + ", ".join(f"{_e(m)} {_num(v)}" for m, v in ref.p_match.items()) + "</p>") if ref.p_match is not None else ""
    return _section(title, _rows(["answerer", "metric", "mean", "95% low", "95% high"], rows, numeric_from=2) + extra,
                    "reference")


def _cost_section(rep: dict | None) -> str:
    title = "Cumulative cost and break-even"
    if rep is None:
        return _section("Cost", _missing("no cost report yet: run <code>llamaduo cost</code> (or <code>llamaduo loop</code>, "
                                        "which writes metrics/cost.json after each cycle)"), "cost")
    table = _rows(["", "service LLM", "local model"], [
        ["USD per request", rep.get("service_usd_per_request"), rep.get("local_usd_per_request")],
        ["USD per month", rep.get("service_usd_per_month"), rep.get("local_usd_per_month")],
        ["migration (loop's service calls + training GPU)", None, rep.get("migration_cost_usd")],
        ["tokens per request (input / output)",
         f"{_num(rep.get('input_tokens_per_request'), 1)} / {_num(rep.get('output_tokens_per_request'), 1)}", None],
    ])
    be = rep.get("break_even_month")
    verdict = f"break-even in month {be}" if be else f"no break-even within {len(rep['curve'])} months"
    return _section("Cost", _figure(plots.cost(rep, title), title) + table + f"<p><b>{_e(verdict)}</b></p>", "cost")


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


def _side_by_side_section(answers: SideBySide | None) -> str:
    title = "Local and service answers side by side"
    if answers is None:
        return _section(title, _missing("no local answers yet: run <code>dvc repro infer</code>"), "answers")
    head = "<th>instruction</th><th>reference</th><th>local (sample 0)</th>" + "".join(
        f"<th>{_e(s)} (service)</th>" for s in answers.services)
    rows = "".join("<tr>" + "".join(f"<td><pre>{_e(c)}</pre></td>" for c in (r["instruction"], r["reference"], r["local"], *r["services"]))
                   + "</tr>" for r in answers.rows)
    note = "" if answers.services else _missing("no service answers: set <code>judge.baseline.services</code> and run "
                                                "<code>dvc repro baseline</code>")
    return _section(title, f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>" + note, "answers")


def _capture_section(cap: dict | None) -> str:
    title = "Captured traffic"
    if cap is None:
        return _section(title, _missing("no capture: <code>llamaduo capture</code> adds recorded traffic to the "
                                        "coverage data (metrics/capture.json)"), "capture")
    sources = cap.get("sources", {})
    rows = [[name, s.get("read"), s.get("kept"), s.get("already_captured"),
             _by_reason(s.get("dropped")), _by_reason(s.get("dropped_before")),
             _rating_text(s.get("ratings"), s.get("read"))] for name, s in sources.items()]
    inner = _rows(["source", "read", "kept", "already captured", "dropped by reason", "skipped, dropped before", "rated"],
                  rows, numeric_from=1)
    tasks = [[task, sum(t.get("added", {}).values()), t.get("to_test"), t.get("held"),
              _by_reason(t.get("dropped")),
              "no: add it to data.tasks" if t.get("unlisted") else "yes"] for task, t in cap.get("tasks", {}).items()]
    inner += _rows(["task", "rows added", "of them to test", "held before", "dropped by hygiene", "in data.tasks"], tasks)
    found = ", ".join(f"{k} {v}" for k, v in cap.get("pii", {}).items() if v)
    if found:
        inner += f"<p>Secrets and personal data ({_e(cap.get('pii_action'))}): {_e(found)}</p>"
    # only web addresses become links: the file is data, and a `javascript:` href would run on a click
    links = [(name, u) for name, s in sources.items() for u in s.get("links", []) if str(u).startswith(("http://", "https://"))]
    if links:
        inner += ("<p>Kept traces in the MLflow UI:</p><ul>"
                  + "".join(f"<li>{_e(name)}: <a href=\"{_e(u)}\">{_e(u)}</a></li>" for name, u in links) + "</ul>")
    return _section(title, inner, "capture")


def _by_reason(counts: dict | None) -> str:
    """Counts by reason as "reason n, ..." in the file's order; "none" without any."""
    return ", ".join(f"{k} {v}" for k, v in (counts or {}).items()) or "none"


def _rating_text(r: dict | None, read) -> str | None:
    """Rating coverage: how many calls carried a rating, and how many of those were positive."""
    if not r or not read:
        return None
    rated = read - r.get("unrated", 0)
    return f"{rated} of {read} ({rated / read:.0%}); {r.get('positive', 0)} positive"
