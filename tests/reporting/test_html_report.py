"""metrics/report.html: built from a small synthetic metrics folder (no pipeline run), opened in headless Chromium
(screenshot not blank, the figures' titles in the DOM), text escaped, sections that say what to run when their
file is missing."""

import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from report_fixtures import HOSTILE, write_project_outputs

from llamaduo.reporting import html_report, page_data

FIGURES = ["Judge score against synthetic volume", "Precision against similarity per answer",
           "Cumulative cost and break-even"]


class _Titles(HTMLParser):
    """The text of each `h3.figure-title`, and how many images are inline PNGs or fetched from elsewhere."""

    def __init__(self):
        super().__init__()
        self.titles, self.inline_png, self.remote, self._in = [], 0, [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._in = tag == "h3" and "figure-title" in (a.get("class") or "")
        if self._in:
            self.titles.append("")
        for key in ("src", "href"):
            v = a.get(key) or ""
            if v.startswith("data:image/png;base64,"):
                self.inline_png += 1
            elif v:
                self.remote.append(v)

    def handle_endtag(self, tag):
        self._in = False if tag == "h3" else self._in

    def handle_data(self, data):
        if self._in:
            self.titles[-1] += data


def parse(text: str) -> _Titles:
    p = _Titles()
    p.feed(text)
    return p


@pytest.fixture
def report(tmp_path):
    write_project_outputs(tmp_path)
    out = html_report.write(tmp_path / "metrics" / "report.html", page_data.load(metrics_dir=tmp_path / "metrics", data_dir=tmp_path / "data"))
    return out, out.read_text()


def test_every_section_is_drawn_from_the_files_with_inline_figures(report):
    path, text = report
    assert path.name == "report.html"
    page = parse(text)
    assert page.titles == FIGURES and page.inline_png == 3 and page.remote == []
    # the gate's decision and why, the per-judge table (both judges, coverage at each zeta, P-Match), the reference
    # metrics of local and service answers, the break-even verdict, each cycle of the history
    assert "PASS" in text and "precision 62.50 passes (threshold 60)" in text
    assert re.search(r"<td>j2</td><td>similarity</td><td class=\"num\">45.00</td><td class=\"num\">37.50</td>"
                     r"<td class=\"num\">52.00</td><td class=\"num\">0.33</td><td class=\"num\">0.00</td><td class=\"num\">0.77</td>", text)
    assert "<td>gpt-svc</td><td>chrf</td><td class=\"num\">49.00</td>" in text
    # $ a request: the service's (100 x 2.5 + 50 x 10) / 1e6, the local model's $100 a month over 100k requests
    assert "no break-even within 12 months" in text and "<td class=\"num\">0.00075</td><td class=\"num\">0.001</td>" in text
    assert len(re.findall(r"<tr><td>[012]</td><td>(0|50|100)</td><td>precision</td>", text)) == 3
    assert "<tr><td>2</td><td>100</td><td>precision</td><td class=\"num\">62.50</td><td class=\"num\">55.00</td>" in text
    # side by side: the first 5 prompts by id, the local model's sample 0 (not 1) beside the service's answer
    assert "local answer p4/0" in text and "local answer p4/1" not in text and "service answer p4" in text
    assert "Summarize note p5." not in text and "Reference for p0." in text
    # the worst answer with the judge's reasons
    assert "misses the point" in text and "Summarize the memo about room changes." in text


def test_answers_and_reasons_are_escaped(report):
    _, text = report
    assert "<script>" not in text and "onerror=alert(1)>" not in text and HOSTILE not in text
    assert text.count("&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;") == 3  # an answer, a reason, a local answer


def test_missing_files_leave_sections_that_say_what_to_run(tmp_path):
    out = html_report.write(tmp_path / "r.html", page_data.load(metrics_dir=tmp_path / "none", data_dir=tmp_path / "none"))
    text = out.read_text()
    assert "no history yet: run <code>llamaduo loop</code>" in text
    assert "no summary yet" in text and "no cost report yet" in text and "no local answers yet" in text
    assert "no worst answers yet" in text and "no judgments yet" in text and "no reference metrics" in text
    assert parse(text).titles == []


def test_an_empty_history_and_one_without_every_judge_still_draw(tmp_path):
    write_project_outputs(tmp_path, history=[])
    text = html_report.write(tmp_path / "r.html", page_data.load(tmp_path / "metrics", tmp_path / "data")).read_text()
    assert "no history yet" in text and parse(text).titles == FIGURES[1:]
    from report_fixtures import HISTORY

    # a cycle entry written before `judges` was recorded: the primary judge's means, the gate metric's interval
    series = page_data.history_series(HISTORY)
    assert series[("j1", "precision")] == [(0, 40.0, 33.0, 47.0), (50, 52.0, 45.0, 59.0), (100, 62.5, 55.0, 70.0)]
    assert series[("j1", "similarity")][:2] == [(0, 30.0, None, None), (50, 41.0, None, None)]
    assert series[("j2", "similarity")] == [(100, 45.0, 37.5, 52.0)]


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:  # fail, not skip: the report's one real check is that a browser renders it
        pytest.fail("headless Chromium is not installed: `apt-get install -y chromium` as root (scripts/test.sh "
                    "installs it when it runs as root or with passwordless sudo)")
    return exe


def browse(tmp_path, *args: str) -> subprocess.CompletedProcess:
    # --no-sandbox: CI and this container run as root, where Chromium's sandbox refuses to start; the page is
    # our own file. A fresh profile per call keeps two test runs from sharing a lock.
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def test_chromium_renders_the_page_with_its_figures(report, tmp_path):
    from PIL import Image, ImageStat

    path, _ = report
    shot = tmp_path / "shot.png"
    browse(tmp_path, f"--screenshot={shot}", "--window-size=1280,3000", path.as_uri())
    with Image.open(shot) as img:
        assert img.size == (1280, 3000)
        grey = img.convert("L")
        # a blank (or failed) render is one colour; text, tables and three plots spread the grey levels
        assert ImageStat.Stat(grey).stddev[0] > 20
        # the plots' pixels, not only text: many distinct colours (blue/orange lines, bands, fills)
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 200
    dom = browse(tmp_path, "--dump-dom", path.as_uri()).stdout
    page = parse(dom)
    assert page.titles == FIGURES and page.inline_png == 3
    assert "<script>" not in dom.split("<body", 1)[1]  # the hostile answers stayed text in the browser's DOM


def test_the_blank_check_would_catch_a_blank_page(tmp_path):
    from PIL import Image, ImageStat

    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    shot = tmp_path / "blank.png"
    browse(tmp_path, f"--screenshot={shot}", "--window-size=400,300", blank.as_uri())
    with Image.open(shot) as img:
        assert ImageStat.Stat(img.convert("L")).stddev[0] < 1


def test_the_gate_section_says_which_question_was_answered_its_bound_and_when_the_test_set_is_too_small(tmp_path):
    import json

    from llamaduo.config import GateParams
    from llamaduo.reporting.summary import summary

    write_project_outputs(tmp_path)
    m = tmp_path / "metrics"
    files = {n: str(m / f"{n}.json") for n in ("prepare", "curate", "train", "infer", "eval", "champion")}
    # 7 prompts whose ROUGE-L trails the service's by 1 to 9 points, in a spread 7 prompts cannot resolve at a margin of 2
    local = {f"p{i}": 30.0 + d for i, d in enumerate([-1.0, -9.0, 4.0, -6.0, 2.0, -3.0, 0.0])}
    service = {f"p{i}": 30.0 for i in range(7)}
    s = summary(**files, p=GateParams(metric="rouge_l", mode="non_inferiority", margin=2.0, cycle_alpha=0.025),
                scores=(local, {"gpt-svc": service}))
    s["judging"] = {"judgments_paid": 16, "judgments_full": 64, "saving": 0.75, "stopped": "round 1 of 4: the gate will not pass"}
    (m / "summary.json").write_text(json.dumps(s))
    text = html_report.render(page_data.load(m, tmp_path / "data"))
    assert "16 / 64 (saved 75%)" in text and "round 1 of 4: the gate will not pass" in text
    g = s["gate"]
    assert not g["passed"] and g["test"]["estimate"] == pytest.approx(-13 / 7, abs=1e-3)
    assert "The question the gate answered (non_inferiority): is the local model&#x27;s rouge_l no more than 2 points " \
           "below the best service&#x27;s?" in text
    assert f"<td>{g['test']['bound']:.2f}</td>" in text.replace(" class=\"num\"", "")
    assert "one-sided 97.5% lower bound (this cycle&#x27;s share of gate.alpha)" in text
    assert "Underpowered: 7 test prompts detect a difference of" in text and "test prompts would detect it" in text


def test_the_capture_summary_shows_counts_by_source_and_task_rating_coverage_and_links_to_the_traces(tmp_path):
    import json

    m = tmp_path / "metrics"
    m.mkdir()
    link = "http://127.0.0.1:5000/#/experiments/1/traces?selectedEvaluationId=tr-7"
    (m / "capture.json").write_text(json.dumps({
        "sources": {"mlflow": {"query": {"source": "mlflow"}, "read": 40, "kept": 9, "already_captured": 3,
                               "dropped": {"not_positive": 6, "unrated": 10, "tool_call": 2},
                               "dropped_before": {"pii": 4},
                               "ratings": {"negative": 6, "positive": 14, "unrated": 20},
                               "links": [link, "javascript:alert(1)"]},
                    "otlp": {"query": {"source": "otlp"}, "read": 5, "kept": 5, "already_captured": 0, "dropped": {}}},
        "tasks": {"summarize": {"held": 395, "added": {"mlflow": 9, "otlp": 5}, "dropped": {"near_duplicate": 1},
                                "to_test": 2, "unlisted": False},
                  "triage": {"held": 0, "added": {"otlp": 0}, "dropped": {}, "to_test": 0, "unlisted": True}},
        "pii": {"API_KEY": 1, "EMAIL": 0}, "pii_action": "redact"}))
    text = html_report.write(tmp_path / "r.html", page_data.load(m, tmp_path / "data")).read_text()
    section = text[text.index('<section id="capture">'):]
    # per source: read, kept, already captured, new drops by reason, calls passed over as dropped by an earlier
    # capture, rating coverage (20 of 40 rated, 14 positive)
    assert ("<td>mlflow</td><td class=\"num\">40</td><td class=\"num\">9</td><td class=\"num\">3</td>"
            "<td class=\"num\">not_positive 6, unrated 10, tool_call 2</td><td class=\"num\">pii 4</td>"
            "<td class=\"num\">20 of 40 (50%); 14 positive</td>" in section)
    assert ("<td>otlp</td><td class=\"num\">5</td><td class=\"num\">5</td><td class=\"num\">0</td>"
            "<td class=\"num\">none</td><td class=\"num\">none</td><td class=\"num\">–</td>" in section)
    # per task: rows added over every source, how many land in test, what the task held
    assert "<td>summarize</td><td class=\"num\">14</td><td class=\"num\">2</td><td class=\"num\">395</td>" in section
    assert "no: add it to data.tasks" in section and "Secrets and personal data (redact): API_KEY 1</p>" in section
    # the trace's link back to the MLflow UI; an address that is not a web address is no link
    assert section.count("<a href=") == 1 and f'<a href="{link.replace("&", "&amp;")}">' in section
    assert "javascript:" not in section
    # a project that never captured says what writes the section
    bare = html_report.write(tmp_path / "b.html", page_data.load(tmp_path / "none", tmp_path / "none")).read_text()
    assert "no capture: <code>llamaduo capture</code>" in bare


def test_the_gate_section_says_how_the_candidate_was_checked_against_the_champion():
    from llamaduo.reporting.html_report import regression_text

    paired = {"version": "4", "method": "paired", "prompts": 10, "alpha": 0.025, "against": -2.0, "estimate": -0.47,
              "bound": -0.7118}
    assert regression_text(paired) == ("paired with v4 over 10 prompts: candidate - champion -0.47, lower bound "
                                        "-0.71, must be above -2")
    unpaired = {"version": "4", "method": "unpaired", "prompts": 5, "ci_low": 19.2,
                "why": "5 test prompts shared with the champion, fewer than 8"}
    assert regression_text(unpaired) == ("unpaired: the mean against v4's 95% interval from 19.20 (5 test prompts "
                                          "shared with the champion, fewer than 8)")
    assert regression_text(None) is None
